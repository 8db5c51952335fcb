"""tools/mutants.py breaks the source by replacing a line it names; a mutant whose line the
source no longer has stops the whole run. Each mutant's line must occur exactly once."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_mutant_names_a_line_the_source_has_once():
    spec = importlib.util.spec_from_file_location("genflow_mutants", ROOT / "tools" / "mutants.py")
    mutants = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("genflow_mutants", mutants)  # dataclasses look their module up
    spec.loader.exec_module(mutants)
    counts = {m.name: (ROOT / m.path).read_text().count(m.old) for m in mutants.MUTANTS}
    assert len(counts) == len(mutants.MUTANTS) > 30
    assert {name: n for name, n in counts.items() if n != 1} == {}
