"""Built-in ``search``: a small document set split into shards, ranked with BM25.

Every instance holds one shard, so a fanout over A..H with the ``topk`` aggregate gives the
same ranking as one search over the whole corpus. Scores use the statistics of the *whole*
corpus (document frequencies, average length), never the shard's, which is what makes
scores from different shards comparable. The shard of a document is
``crc32(id) % shard_count``: stable across processes and Python versions (``hash()`` is not).

Stdlib only (and :class:`HandlerError` for bad payloads); :class:`SearchHandler` is the thin
async wrapper the app calls.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .handlers import HandlerContext, HandlerError

__all__ = [
    "CORPUS",
    "DEFAULT_K",
    "MAX_K",
    "SearchHandler",
    "Shard",
    "default_shard",
    "parse_search_payload",
    "parse_shard",
    "search_corpus",
    "shard_of",
]

DEFAULT_K = 5
MAX_K = 100
_K1 = 1.2
_B = 0.75
_LETTERS = "ABCDEFGH"

CORPUS: Mapping[str, str] = {
    "doc-01": "Raft elects a leader by randomized timeouts and replicates a log to followers.",
    "doc-02": "Paxos reaches consensus among acceptors even when a minority of nodes fail.",
    "doc-03": "Vector clocks order events across distributed processes without a global clock.",
    "doc-04": "Consistent hashing spreads keys over a ring so adding a node moves few keys.",
    "doc-05": "The CAP theorem says a partitioned system must choose consistency or availability.",
    "doc-06": "Gossip protocols spread membership and failure news epidemically between peers.",
    "doc-07": "Exponential backoff with jitter keeps retrying clients from stampeding a server.",
    "doc-08": "A circuit breaker stops calls to a failing dependency until a probe succeeds.",
    "doc-09": "Sourdough bread rises slowly as wild yeast and lactic bacteria ferment the dough.",
    "doc-10": "A French omelette is cooked fast over high heat and rolled while still soft inside.",
    "doc-11": "Risotto needs short grain rice stirred with warm stock added one ladle at a time.",
    "doc-12": "Searing meat browns its surface through the Maillard reaction between sugars.",
    "doc-13": "Fresh pasta dough is flour and eggs kneaded smooth, rested, then rolled thin.",
    "doc-14": "Tomato sauce simmered with garlic and basil thickens as its water evaporates.",
    "doc-15": "Black holes bend light so strongly that nothing escapes past the event horizon.",
    "doc-16": "Jupiter is a gas giant whose Great Red Spot is a storm older than three centuries.",
    "doc-17": "Neutron stars are collapsed stellar cores spinning hundreds of times per second.",
    "doc-18": "The Hubble constant measures how fast the universe expands with distance.",
    "doc-19": "Exoplanets are found by the dip in starlight when a planet transits its star.",
    "doc-20": "A solar eclipse happens when the Moon passes between the Earth and the Sun.",
    "doc-21": "Mitochondria produce most of a cell's energy as ATP through respiration.",
    "doc-22": "DNA stores genetic information in sequences of four nucleotide bases.",
    "doc-23": "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
    "doc-24": "Honeybees dance to tell hive mates the direction and distance of flowers.",
    "doc-25": "The Roman aqueducts carried water across valleys on arches of stone.",
    "doc-26": "The printing press of Gutenberg made books cheap and spread literacy in Europe.",
    "doc-27": "The Silk Road linked China with the Mediterranean through caravan trade.",
    "doc-28": "The Apollo 11 mission landed the first astronauts on the Moon in 1969.",
    "doc-29": "A fugue states a melody and imitates it in several voices, as Bach did.",
    "doc-30": "Jazz improvisation builds solos over chord changes and a swinging rhythm.",
    "doc-31": "A violin's tone depends on its spruce top, maple back and the bow's rosin.",
    "doc-32": "Equal temperament divides the octave into twelve equal semitones.",
    "doc-33": "Marathon runners train aerobic endurance with long slow distance runs.",
    "doc-34": "In chess the Sicilian Defence answers the king's pawn with an open fight.",
    "doc-35": "A football offside rule keeps attackers behind the last defender.",
    "doc-36": "A B-tree index keeps sorted keys in wide nodes so lookups touch few pages.",
    "doc-37": "Garbage collectors reclaim memory from objects that are no longer reachable.",
    "doc-38": "A hash table finds values by key in constant time on average.",
    "doc-39": "Write-ahead logging makes database commits durable before pages are written.",
    "doc-40": "Plate tectonics moves continents a few centimetres a year over the mantle.",
    "doc-41": "Volcanoes erupt when magma pressure breaks through the crust of the Earth.",
    "doc-42": "Glaciers carve U-shaped valleys as moving ice grinds the rock beneath.",
    "doc-43": "Inflation erodes the purchasing power of money when prices rise broadly.",
    "doc-44": "Central banks raise interest rates to cool demand and slow inflation.",
    "doc-45": "Comparative advantage explains why nations gain from trade and specialization.",
    "doc-46": "Vaccines train the immune system to recognize a pathogen before infection.",
    "doc-47": "Sleep consolidates memory and clears waste from the brain at night.",
    "doc-48": "Impressionist painters caught light and color outdoors with quick brushstrokes.",
}

_STOPWORDS = frozenset(
    "a an and are as at be by for from in is it its of on or so the to with when while how"
    " what why who this that than then into over no not one all".split()
)
_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and numbers, stop words removed."""
    return [word for word in _TOKEN.findall(text.lower()) if word not in _STOPWORDS]


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count``; written ``"index/count"``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= index < count")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def has(self, doc_id: str) -> bool:
        """Whether the document ``doc_id`` lives in this shard."""
        return shard_of(doc_id, self.count) == self.index


def shard_of(doc_id: str, count: int) -> int:
    """The shard index of ``doc_id`` among ``count`` shards."""
    return zlib.crc32(doc_id.encode()) % count


def parse_shard(text: str) -> Shard:
    """``"2/8"`` to ``Shard(2, 8)``; ValueError naming the expected form otherwise."""
    index, sep, count = text.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise ValueError(f"shard {text!r}: expected 'index/count', e.g. '0/8'")
    return Shard(int(index), int(count))


def default_shard(name: str) -> Shard:
    """A single letter A..H is its position of 8 (A is 0/8); any other name holds it all."""
    if len(name) == 1 and name.upper() in _LETTERS:
        return Shard(_LETTERS.index(name.upper()), len(_LETTERS))
    return Shard(0, 1)


@dataclass(frozen=True, slots=True)
class _Index:
    """Corpus-wide statistics, computed once."""

    terms: Mapping[str, Counter[str]]
    lengths: Mapping[str, int]
    idf: Mapping[str, float]
    avg_length: float


def _build_index(corpus: Mapping[str, str]) -> _Index:
    terms = {doc_id: Counter(tokenize(text)) for doc_id, text in corpus.items()}
    lengths = {doc_id: sum(counts.values()) for doc_id, counts in terms.items()}
    df = Counter(term for counts in terms.values() for term in counts)
    n = len(corpus)
    idf = {term: math.log(1 + (n - f + 0.5) / (f + 0.5)) for term, f in df.items()}
    return _Index(terms, lengths, idf, sum(lengths.values()) / n)


_INDEX = _build_index(CORPUS)


def _bm25(doc_id: str, query: list[str]) -> float:
    """Okapi BM25: sum over query terms t of idf(t) * tf*(k1+1) / (tf + k1*(1-b+b*len/avg))."""
    counts = _INDEX.terms[doc_id]
    norm = _K1 * (1 - _B + _B * _INDEX.lengths[doc_id] / _INDEX.avg_length)
    score = 0.0
    for term in query:
        tf = counts.get(term, 0)
        if tf:
            score += _INDEX.idf[term] * tf * (_K1 + 1) / (tf + norm)
    return score


def search_corpus(query: str, *, k: int = DEFAULT_K, shard: Shard | None = None) -> list[Any]:
    """The top ``k`` documents of ``shard`` (all when None) matching ``query``, best first.

    Each match is ``{"id", "score", "text"}``; ties break by id so results are stable.
    """
    words = tokenize(query)
    scored = []
    for doc_id in CORPUS:
        if shard is not None and not shard.has(doc_id):
            continue
        score = _bm25(doc_id, words)
        if score > 0:
            scored.append((-score, doc_id))
    scored.sort()
    return [
        {"id": doc_id, "score": round(-neg, 6), "text": CORPUS[doc_id]}
        for neg, doc_id in scored[:k]
    ]


def parse_search_payload(payload: Any) -> tuple[str, int]:
    """``{"query": str, "k": int}`` to ``(query, k)``; HandlerError 400 naming the bad field."""
    if not isinstance(payload, dict):
        raise HandlerError(400, "invalid_request", 'payload: expected {"query": "...", "k": 5}')
    query = payload.get("query")
    if not isinstance(query, str):
        raise HandlerError(400, "invalid_request", "query: expected a string")
    k = payload.get("k", DEFAULT_K)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise HandlerError(400, "invalid_request", f"k: expected an integer from 1 to {MAX_K}")
    return query, k


class SearchHandler:
    """The ``search`` handler of one instance; its shard defaults to one from the name."""

    __slots__ = ("shard",)

    def __init__(self, shard: Shard | None = None) -> None:
        self.shard = shard

    async def __call__(self, payload: Any, context: HandlerContext) -> Any:
        """Run inline on the loop: ranking 48 short documents costs microseconds."""
        query, k = parse_search_payload(payload)
        shard = self.shard or default_shard(context.instance)
        matches = search_corpus(query, k=k, shard=shard)
        for match in matches:
            match["instance"] = context.instance
        return {"instance": context.instance, "shard": str(shard), "matches": matches}

    def __repr__(self) -> str:
        return f"<SearchHandler shard={self.shard or 'from name'}>"
