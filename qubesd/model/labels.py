"""Labels: the coloured padlocks of domains (8 defaults, custom ones from index 9)."""

from dataclasses import dataclass

DEFAULT_LABELS = (
    (1, "red", "0xcc0000"), (2, "orange", "0xf57900"), (3, "yellow", "0xedd400"),
    (4, "green", "0x73d216"), (5, "gray", "0x555555"), (6, "blue", "0x3465a4"),
    (7, "purple", "0x75507b"), (8, "black", "0x000000"),
)


@dataclass(frozen=True, slots=True)
class Label:
    index: int
    name: str
    color: str

    @property
    def icon(self) -> str:
        return f"appvm-{self.name}"

    def __str__(self) -> str:
        return self.name
