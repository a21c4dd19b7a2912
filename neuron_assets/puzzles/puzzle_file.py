"""Neuron puzzles (method.md §10): synthetic neurons with a known explanation, read from JSON.

The file format is the study's: an object mapping each puzzle's name to
``{"name", "explanation", "sentences", "false_explanations"}``, where a sentence is a
list whose items are a token string (activation 0) or a ``[token, activation]`` pair.
Tokens are the puzzle author's, not any model's: the simulator is shown them as written.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

OUR_PUZZLES = Path(__file__).with_name("neuron_puzzles.json")
FIELDS = ("name", "explanation", "sentences", "false_explanations")


class PuzzleFormatError(ValueError):
    """The puzzle file is not in the study's format; the message names the puzzle and the item."""


@dataclass(frozen=True)
class Puzzle:
    name: str
    explanation: str
    sentences: tuple[tuple[tuple[str, float], ...], ...]  # per sentence: (token, activation) pairs
    false_explanations: tuple[str, ...]

    @property
    def tokens(self) -> list[list[str]]:
        return [[token for token, _ in sentence] for sentence in self.sentences]

    @property
    def activations(self) -> list[list[float]]:
        return [[value for _, value in sentence] for sentence in self.sentences]


def load_puzzles(path: str | Path = OUR_PUZZLES) -> list[Puzzle]:
    """Every puzzle of the file, in file order; any departure from the format is a ``PuzzleFormatError``."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PuzzleFormatError(f"puzzle file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PuzzleFormatError(f"puzzle file {path} is not JSON: {error}") from None
    if not isinstance(document, dict) or not document:
        raise PuzzleFormatError(f"puzzle file {path} must hold a non-empty object mapping puzzle names to puzzles")
    return [_puzzle(path, key, value) for key, value in document.items()]


def _puzzle(path: Path, key: str, value: object) -> Puzzle:
    where = f"{path}: puzzle {key!r}"
    if not isinstance(value, dict):
        raise PuzzleFormatError(f"{where} must be an object with {', '.join(FIELDS)}")
    missing = [f for f in FIELDS if f not in value]
    if missing:
        raise PuzzleFormatError(f"{where} lacks {', '.join(missing)}")
    if not isinstance(value["explanation"], str) or not value["explanation"].strip():
        raise PuzzleFormatError(f"{where}: 'explanation' must be a non-empty string")
    false = value["false_explanations"]
    if not isinstance(false, list) or not false or not all(isinstance(f, str) and f.strip() for f in false):
        raise PuzzleFormatError(f"{where}: 'false_explanations' must be a non-empty list of non-empty strings")
    sentences = value["sentences"]
    if not isinstance(sentences, list) or not sentences:
        raise PuzzleFormatError(f"{where}: 'sentences' must be a non-empty list")
    parsed = tuple(_sentence(f"{where}, sentence {i}", s) for i, s in enumerate(sentences))
    if not any(a != 0 for sentence in parsed for _, a in sentence):
        raise PuzzleFormatError(f"{where} has no token with a non-zero activation: no explanation can be scored on it")
    return Puzzle(str(value["name"]), value["explanation"].strip(), parsed, tuple(f.strip() for f in false))


def _sentence(where: str, sentence: object) -> tuple[tuple[str, float], ...]:
    if not isinstance(sentence, list) or not sentence:
        raise PuzzleFormatError(f"{where} must be a non-empty list of tokens")
    items = []
    for j, item in enumerate(sentence):
        if isinstance(item, str):
            items.append((item, 0.0))
        elif (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], int | float)
            and not isinstance(item[1], bool)
            and math.isfinite(item[1])
        ):
            items.append((item[0], float(item[1])))
        else:
            raise PuzzleFormatError(
                f"{where}, item {j}: {item!r} is neither a token string nor a [token, activation] pair"
            )
        if items[-1][0] == "":
            raise PuzzleFormatError(f"{where}, item {j}: empty token")
    return tuple(items)
