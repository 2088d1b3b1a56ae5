"""Fuzz the X12 270/271 parser with seeded mutations of the shared samples; report crashes.

A crash is any exception that is not an `X12Error`. Usage:

    python -m bench.fuzz_x12 [--count 100000] [--seed 5010] [--save-crashes DIR]

Exit status 1 when a crash was found. The same seed and samples give the same inputs.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eligibility_svc.x12 import X12Error, parse_x12

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "x12"
DELIMITER_BYTES = b"*~^:|>\n\r \t"
ISA_LENGTH = 106
_SHOWN_CRASHES = 5


@dataclass(frozen=True)
class Seed:
    """One sample and its segment terminator, for segment-level mutations."""

    name: str
    data: bytes
    terminator: bytes


@dataclass
class Report:
    count: int = 0
    parsed: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    crashes: list[tuple[int, str, bytes]] = field(default_factory=list)
    seconds: float = 0.0


def load_seeds(data_dir: Path) -> list[Seed]:
    seeds = []
    for path in sorted(data_dir.rglob("*.edi")):
        data = path.read_bytes()
        stripped = data.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
        terminator = stripped[ISA_LENGTH - 1 : ISA_LENGTH] or b"~"
        seeds.append(Seed(str(path.relative_to(data_dir)), data, terminator))
    return seeds


def _flip(rng: random.Random, data: bytearray, seed: Seed) -> bytearray:
    at = rng.randrange(len(data))
    data[at] ^= 1 << rng.randrange(8)
    return data


def _random_byte(rng: random.Random, data: bytearray, seed: Seed) -> bytearray:
    data[rng.randrange(len(data))] = rng.randrange(256)
    return data


def _truncate(rng: random.Random, data: bytearray, seed: Seed) -> bytearray:
    return data[: rng.randrange(len(data))]


def _delete_span(rng: random.Random, data: bytearray, seed: Seed) -> bytearray:
    at = rng.randrange(len(data))
    del data[at : at + rng.randint(1, 40)]
    return data


def _insert_bytes(rng: random.Random, data: bytearray, seed: Seed) -> bytearray:
    at = rng.randrange(len(data) + 1)
    if rng.random() < 0.5:
        data[at:at] = bytes([rng.choice(DELIMITER_BYTES)])
    else:
        data[at:at] = rng.randbytes(rng.randint(1, 8))
    return data


def _swap_delimiters(rng: random.Random, data: bytearray, seed: Seed) -> bytearray:
    first, second = rng.sample(DELIMITER_BYTES, 2)
    table = bytes.maketrans(bytes([first, second]), bytes([second, first]))
    return bytearray(bytes(data).translate(table))


def _copy_span(rng: random.Random, data: bytearray, seed: Seed) -> bytearray:
    start = rng.randrange(len(data))
    chunk = data[start : start + rng.randint(1, 60)]
    at = rng.randrange(len(data) + 1)
    data[at:at] = chunk
    return data


def _segment_edit(rng: random.Random, data: bytearray, seed: Seed) -> bytearray:
    """Delete, duplicate or swap whole segments, or blank one element of a segment."""
    segments = bytes(data).split(seed.terminator)
    if len(segments) < 3:
        return data
    i, j = rng.randrange(len(segments)), rng.randrange(len(segments))
    action = rng.randrange(4)
    if action == 0:
        del segments[i]
    elif action == 1:
        segments.insert(j, segments[i])
    elif action == 2:
        segments[i], segments[j] = segments[j], segments[i]
    else:
        elements = segments[i].split(b"*")
        elements[rng.randrange(len(elements))] = rng.choice([b"", b"ZZ", b"99999999", b"-1.5"])
        segments[i] = b"*".join(elements)
    return bytearray(seed.terminator.join(segments))


MUTATIONS: Sequence[Callable[[random.Random, bytearray, Seed], bytearray]] = (
    _flip,
    _random_byte,
    _truncate,
    _delete_span,
    _insert_bytes,
    _swap_delimiters,
    _copy_span,
    _segment_edit,
)


def mutate(rng: random.Random, seed: Seed) -> bytes:
    data = bytearray(seed.data)
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        data = rng.choice(MUTATIONS)(rng, data, seed)
    return bytes(data)


def run(seeds: Sequence[Seed], count: int, rng_seed: int) -> Report:
    rng = random.Random(rng_seed)
    report = Report()
    started = time.perf_counter()
    for index in range(count):
        data = mutate(rng, rng.choice(seeds))
        try:
            parse_x12(data)
            report.parsed += 1
        except X12Error as error:
            report.refused[type(error).__name__] += 1
        except Exception:
            report.crashes.append((index, traceback.format_exc(), data))
        report.count += 1
    report.seconds = time.perf_counter() - started
    return report


def print_report(report: Report, seeds: Sequence[Seed], rng_seed: int) -> None:
    rate = report.count / report.seconds if report.seconds else 0.0
    print(f"samples:  {len(seeds)} seed files, rng seed {rng_seed}")
    print(f"inputs:   {report.count} in {report.seconds:.1f} s ({rate:,.0f} inputs/s)")
    print(f"parsed:   {report.parsed}")
    for name, number in sorted(report.refused.items()):
        print(f"refused:  {number} {name}")
    print(f"crashes:  {len(report.crashes)} (non-X12Error exceptions)")
    for index, trace, _ in report.crashes[:_SHOWN_CRASHES]:
        print(f"--- crash at input {index}:\n{trace}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="inputs to try")
    parser.add_argument("--seed", type=int, default=5010, help="random seed (reproducible)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--save-crashes", type=Path, help="write crashing inputs here")
    args = parser.parse_args(argv)
    seeds = load_seeds(args.data_dir)
    if not seeds:
        print(f"no .edi samples under {args.data_dir}", file=sys.stderr)
        return 2
    report = run(seeds, args.count, args.seed)
    print_report(report, seeds, args.seed)
    if args.save_crashes and report.crashes:
        args.save_crashes.mkdir(parents=True, exist_ok=True)
        for index, _, data in report.crashes:
            (args.save_crashes / f"crash-{index}.edi").write_bytes(data)
    return 1 if report.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
