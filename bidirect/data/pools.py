"""The pools that individuals are drawn from, shipped as text files in ``pools/``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True)
class Pools:
    first: tuple[tuple[str, str], ...]  # (first name, gender F/M/N)
    middle: tuple[str, ...]
    last: tuple[str, ...]
    birth_cities: tuple[str, ...]
    universities: tuple[str, ...]
    majors: tuple[str, ...]
    companies: tuple[tuple[str, str], ...]  # (company, headquarters city)

    def values(self, attribute: str) -> tuple[str, ...]:
        """Every value an attribute can take (birth dates excluded: they are composed)."""
        return {
            "birth_city": self.birth_cities,
            "university": self.universities,
            "major": self.majors,
            "company": tuple(c for c, _ in self.companies),
            "company_city": tuple(sorted({h for _, h in self.companies})),
        }[attribute]


def _lines(name: str) -> list[str]:
    text = resources.files("bidirect.data").joinpath("pools", name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def _pairs(name: str) -> tuple[tuple[str, str], ...]:
    return tuple(tuple(line.split("\t")) for line in _lines(name))  # type: ignore[misc]


@lru_cache(maxsize=1)
def load_pools() -> Pools:
    return Pools(
        first=_pairs("first_names.txt"),
        middle=tuple(_lines("middle_names.txt")),
        last=tuple(_lines("last_names.txt")),
        birth_cities=tuple(_lines("birth_cities.txt")),
        universities=tuple(_lines("universities.txt")),
        majors=tuple(_lines("majors.txt")),
        companies=_pairs("companies.txt"),
    )
