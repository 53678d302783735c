"""Byte-flip corruption for the integrity tests (not a test module): every byte, or a seeded sample of the
bytes, of a file changed one at a time, two ways each (its lowest bit, and a random other value)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path


def flips(data: bytes, *, sample: int | None = None, seed: int = 0) -> Iterator[tuple[int, int]]:
    """``(position, new byte)`` pairs: for every position (or ``sample`` random ones), ``byte ^ 0x01`` and
    a random value other than the byte itself."""
    rng = random.Random(seed)
    positions = range(len(data)) if sample is None or sample >= len(data) else sorted(
        rng.sample(range(len(data)), sample))
    for at in positions:
        yield at, data[at] ^ 0x01
        yield at, rng.choice([b for b in range(256) if b != data[at]])


def _poke(file: Path, at: int, value: int) -> None:
    with open(file, "r+b") as fh:
        fh.seek(at)
        fh.write(bytes([value]))


def run_flips(file: Path, load: Callable[[], object], same: Callable[[object], bool],
              expected: tuple[type[BaseException], ...], *, sample: int | None = None,
              seed: int = 0) -> dict[str, int]:
    """Flip ``file``'s bytes one at a time and load after each: every load must either return what
    ``same`` accepts (exactly the original) or raise one of ``expected``. Returns counts per outcome;
    ``AssertionError`` listing the flips that did anything else (another error, different content)."""
    original = file.read_bytes()
    counts = {"same": 0, "refused": 0}
    bad: list[str] = []
    for at, value in flips(original, sample=sample, seed=seed):
        _poke(file, at, value)  # in place: a memory-mapped earlier load never sees a truncated file
        try:
            outcome = "same" if same(load()) else "different content"  # checked before the byte is restored
        except expected:
            outcome = "refused"
        except Exception as err:  # noqa: BLE001 - what the test is about
            outcome = f"{type(err).__name__}: {err}"[:300]
        finally:
            _poke(file, at, original[at])
        if outcome in counts:
            counts[outcome] += 1
        else:
            bad.append(f"byte {at} {original[at]:#04x}->{value:#04x}: {outcome}")
    assert file.read_bytes() == original
    assert not bad, f"{file.name}: {len(bad)} flips neither refused nor harmless:\n" + "\n".join(bad[:20])
    return counts
