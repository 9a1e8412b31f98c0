"""Real English sentences, offline: harvested from the Python standard library's docstrings.

Text models need real text to quantize, calibrate, profile and measure fidelity on,
and coscale may not download data at run time. The standard library ships thousands
of hand-written English sentences in its docstrings, so we harvest those.

Algorithm (:func:`harvest`):

1. For each module in :data:`STDLIB_MODULES` (a fixed list), read its **source file**
   (modules without Python source — C modules, or missing from this build — are
   skipped) and collect, with :mod:`ast`, the docstrings of the module, of its public
   top-level classes and functions, and of those classes' public methods. Reading
   source rather than imported objects makes the result independent of whatever
   else the process imported (libraries monkeypatch ``warnings``, ``inspect``, …).
2. Split each docstring into paragraphs on blank lines; drop paragraphs that look like
   code or tables (a line starting with ``>>>``, ``$``, an indented line, or a ``::``).
3. Join each paragraph's lines with spaces and split it into sentences after ``.``,
   ``!`` or ``?`` followed by whitespace and an upper-case letter.
4. Keep a sentence when it has :data:`MIN_WORDS`–:data:`MAX_WORDS` words (5–60), starts
   with an upper-case letter, ends with ``.``, ``!`` or ``?``, and at least
   :data:`MIN_ALPHA` (70 %) of its non-space characters are letters.
5. Deduplicate, sort (so the result does not depend on traversal details), then shuffle
   with ``random.Random(SEED)``.

The shuffled list is split into disjoint parts: the first :data:`EVAL_SIZE` (512)
sentences are the **evaluation set** (fidelity), the next :data:`CALIBRATION_SIZE`
(256) the **calibration set** (static quantization), and the rest the **pool** used to
build profiling texts. The harvest is deterministic for a given Python build (the
docstrings are part of it); about 4 400 sentences on CPython 3.11. Cost: parsing the
sources of ~110 modules, about a second, once per process (cached).
"""

from __future__ import annotations

import ast
import importlib.util
import random
import re
import tokenize
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache

SEED = 20240531
MIN_WORDS = 5
MAX_WORDS = 60
MIN_ALPHA = 0.7
EVAL_SIZE = 512
CALIBRATION_SIZE = 256

#: Modules whose docstrings are harvested, in this order.
STDLIB_MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "builtins", "bz2", "calendar",
    "cmd", "codecs", "collections", "concurrent.futures", "configparser", "contextlib", "copy",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "doctest", "email",
    "email.message", "email.utils", "enum", "fileinput", "fnmatch", "fractions", "ftplib",
    "functools", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser",
    "http.client", "http.cookiejar", "http.server", "imaplib", "importlib", "inspect", "io",
    "ipaddress", "itertools", "json", "locale", "logging", "logging.handlers", "lzma",
    "mailbox", "mimetypes", "multiprocessing", "netrc", "numbers", "operator", "optparse",
    "os", "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform", "plistlib",
    "poplib", "pprint", "pydoc", "queue", "quopri", "random", "re", "reprlib", "sched",
    "secrets", "selectors", "shelve", "shlex", "shutil", "signal", "smtplib", "socket",
    "socketserver", "sqlite3", "ssl", "statistics", "string", "struct", "subprocess",
    "symtable", "sysconfig", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tokenize", "trace", "traceback", "turtle", "types", "typing", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "webbrowser", "xml.dom.minidom",
    "xml.etree.ElementTree", "xml.sax", "zipfile", "zipimport", "zoneinfo",
)  # fmt: skip

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE_LINE = re.compile(r"^(\s+\S|>>>|\$ |\.\.\. )")


def _module_source(module_name: str) -> str:
    """The Python source of a stdlib module, or "" (C module, missing from this build)."""
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return ""
    origin = spec.origin if spec is not None else None
    if not origin or not origin.endswith(".py"):
        return ""
    try:
        with tokenize.open(origin) as handle:
            return handle.read()
    except (OSError, SyntaxError):
        return ""


def _public(node: ast.AST) -> bool:
    kinds = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return isinstance(node, kinds) and not node.name.startswith("_")


def docstrings(source: str) -> Iterator[str]:
    """Step 1 of :func:`harvest` on one module's source: module, public top-level
    classes and functions, and the public methods of those classes."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    nodes: list[ast.AST] = [tree]
    for node in tree.body:
        if _public(node):
            nodes.append(node)
            if isinstance(node, ast.ClassDef):
                nodes.extend(sub for sub in node.body if _public(sub))
    for node in nodes:
        doc = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
        if doc:
            yield doc


def split_sentences(doc: str) -> list[str]:
    """Steps 2–4 of :func:`harvest` on one docstring."""
    out: list[str] = []
    for paragraph in re.split(r"\n\s*\n", doc):
        lines = paragraph.splitlines()
        if not lines or any(_CODE_LINE.match(line) for line in lines) or "::" in paragraph:
            continue
        text = " ".join(line.strip() for line in lines)
        out.extend(s for s in _SENTENCE_END.split(text) if _keep(s))
    return out


def _keep(sentence: str) -> bool:
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    if not sentence[0].isupper() or sentence[-1] not in ".!?":
        return False
    chars = [c for c in sentence if not c.isspace()]
    return sum(c.isalpha() for c in chars) >= MIN_ALPHA * len(chars)


@lru_cache(maxsize=1)
def harvest() -> tuple[str, ...]:
    """All harvested sentences, deduplicated and shuffled with ``random.Random(SEED)``."""
    seen: set[str] = set()
    for module_name in STDLIB_MODULES:
        for doc in docstrings(_module_source(module_name)):
            seen.update(split_sentences(doc))
    ordered = sorted(seen)
    random.Random(SEED).shuffle(ordered)
    return tuple(ordered)


def evaluation_set(size: int = EVAL_SIZE) -> list[str]:
    """The first ``size`` (≤ :data:`EVAL_SIZE`) sentences: the fidelity evaluation set."""
    return list(harvest()[: min(size, EVAL_SIZE)])


def calibration_set(size: int = CALIBRATION_SIZE) -> list[str]:
    """``size`` (≤ :data:`CALIBRATION_SIZE`) sentences disjoint from the evaluation set."""
    return list(harvest()[EVAL_SIZE : EVAL_SIZE + min(size, CALIBRATION_SIZE)])


def pool() -> Sequence[str]:
    """Sentences disjoint from both the evaluation and calibration sets (for profiling)."""
    return harvest()[EVAL_SIZE + CALIBRATION_SIZE :]


def sample_sentences(count: int, seed: int) -> list[str]:
    """``count`` pool sentences of varied length, chosen with ``random.Random(seed)``."""
    sentences = pool()
    rng = random.Random(seed)
    return [sentences[rng.randrange(len(sentences))] for _ in range(count)]


@lru_cache(maxsize=1)
def _pool_by_length() -> tuple[str, ...]:
    return tuple(sorted(pool(), key=lambda s: (len(s), s)))


def stratified_sentences(count: int, seed: int) -> list[str]:
    """``count`` pool sentences whose lengths follow the pool's (a stratified sample).

    The pool sorted by length (characters, then text) is cut into ``count`` strata of
    equal size, stratum ``i`` being ranks ``⌊i·N/count⌋`` to ``⌊(i+1)·N/count⌋ − 1``
    (``N`` the pool's size; a stratum never empty: ``count > N`` repeats ranks); one
    sentence is drawn from each with ``random.Random(seed)`` and the ``count`` are
    shuffled with the same generator. So the sample's mean length is the pool's up to
    the spread within a stratum, where a simple random sample's strays by its standard
    error: the four random 32-sentence batches a profile once timed averaged 10.8–13.8
    words against the pool's 13.1, and the median call ran on short ones, so the
    profile said 287 sentences/s where fresh random batches of the pool ran 267 (MiniLM
    int8, one thread). Different seeds give different sentences of the same lengths'
    spread."""
    ordered = _pool_by_length()
    n = len(ordered)
    rng = random.Random(seed)
    picks = []
    for i in range(count):
        low = i * n // count
        high = max(low + 1, (i + 1) * n // count)
        picks.append(ordered[rng.randrange(low, high)])
    rng.shuffle(picks)
    return picks


#: Maps a text to its word-level token layout: (token count including special tokens,
#: and for each non-special token the character offset where its *word* starts).
TokenLayout = Callable[[str], tuple[int, list[int]]]


def text_of_tokens(n_tokens: int, layout: TokenLayout, start: int) -> str:
    """A text of about ``n_tokens`` tokens (special tokens included), never more.

    Concatenates pool sentences from index ``start`` (wrapping around) until their
    token counts (each sentence tokenized alone; WordPiece splits on whitespace, so
    counts add up) reach ``n_tokens``, tokenizes the joined text once, and cuts it at
    the start of the word holding the first token beyond the budget, so no word is
    split. The result has between ``n_tokens - k`` and ``n_tokens`` tokens, ``k`` being
    the number of word pieces of the last word cut off (usually 0–2). Cost: linear in
    ``n_tokens``.
    """
    sentences = pool()
    parts: list[str] = []
    words_tokens = 0
    index = start
    while True:
        sentence = sentences[index % len(sentences)]
        index += 1
        parts.append(sentence)
        count, starts = layout(sentence)
        words_tokens += len(starts)
        if words_tokens + (count - len(starts)) >= n_tokens:
            break
    text = " ".join(parts)
    count, word_starts = layout(text)
    specials = count - len(word_starts)
    budget = max(1, n_tokens - specials)
    if budget >= len(word_starts):
        return text
    return text[: word_starts[budget]].rstrip() or text.split()[0]


def texts_of_tokens(n_tokens: int, count: int, layout: TokenLayout, seed: int) -> list[str]:
    """``count`` different texts of about ``n_tokens`` tokens, starting at seeded pool offsets."""
    rng = random.Random(seed)
    size = len(pool())
    return [text_of_tokens(n_tokens, layout, rng.randrange(size)) for _ in range(count)]
