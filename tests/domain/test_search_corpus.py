"""The built-in search corpus: sharding, BM25 scoring and payload checks (pure, sync)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from openclaw_orchestrator.devtools.reference.handlers import HandlerError
from openclaw_orchestrator.devtools.reference.search import (
    CORPUS,
    DEFAULT_K,
    Shard,
    default_shard,
    parse_search_payload,
    parse_shard,
    search_corpus,
    shard_of,
    tokenize,
)


def test_corpus_is_48_distinct_documents() -> None:
    """The corpus has 48 distinct texts with stable ``doc-NN`` ids."""
    assert len(CORPUS) == 48
    assert len(set(CORPUS.values())) == 48
    assert all(re.fullmatch(r"doc-\d\d", doc_id) for doc_id in CORPUS)


@pytest.mark.parametrize("count", range(1, 9))
def test_every_document_lives_in_exactly_one_shard(count: int) -> None:
    """Across ``count`` shards each document is in exactly one."""
    shards = [Shard(i, count) for i in range(count)]
    for doc_id in CORPUS:
        assert sum(shard.has(doc_id) for shard in shards) == 1


def test_eight_shards_are_all_used() -> None:
    """With 8 shards (A..H) no instance is left without documents."""
    assert {shard_of(doc_id, 8) for doc_id in CORPUS} == set(range(8))


@pytest.mark.parametrize(("doc_id", "index"), [("doc-01", 4), ("doc-07", 1), ("doc-48", 4)])
def test_shard_is_stable(doc_id: str, index: int) -> None:
    """The shard of an id is crc32-based: pinned values hold in every process and version."""
    assert shard_of(doc_id, 8) == index


@pytest.mark.parametrize(
    ("name", "shard"),
    [("A", "0/8"), ("C", "2/8"), ("H", "7/8"), ("h", "7/8"), ("I", "0/1"), ("worker-1", "0/1")],
)
def test_default_shard_from_name(name: str, shard: str) -> None:
    """A single letter A..H is its position of 8; any other name holds the whole corpus."""
    assert str(default_shard(name)) == shard


@pytest.mark.parametrize(("text", "shard"), [("0/8", Shard(0, 8)), ("7/8", Shard(7, 8))])
def test_parse_shard(text: str, shard: Shard) -> None:
    """``i/n`` parses to Shard(i, n)."""
    assert parse_shard(text) == shard


@pytest.mark.parametrize("text", ["8/8", "1/0", "a/b", "3", "-1/4", ""])
def test_parse_shard_rejects(text: str) -> None:
    """Malformed or out-of-range shards raise ValueError."""
    with pytest.raises(ValueError, match="shard"):
        parse_shard(text)


def test_search_ranks_relevant_documents_first() -> None:
    """A consensus query ranks the Raft and Paxos documents on top, scores descending."""
    matches = search_corpus("consensus raft", k=5)
    assert [m["id"] for m in matches[:2]] == ["doc-01", "doc-02"]
    scores = [m["score"] for m in matches]
    assert scores == sorted(scores, reverse=True)
    assert set(matches[0]) == {"id", "score", "text"}


def test_search_respects_k_and_default() -> None:
    """k bounds the number of matches; stop words alone match nothing."""
    assert len(search_corpus("the water of the earth", k=2)) == 2
    assert len(search_corpus("moon sun earth star light water")) == DEFAULT_K
    assert search_corpus("the and of") == []


@pytest.mark.parametrize("query", ["moon", "inflation interest rates", "leader log", "bread"])
def test_shard_scores_merge_to_global_ranking(query: str) -> None:
    """Scores use corpus-wide statistics, so merging the 8 shards' top k gives the global top k."""
    merged = [m for i in range(8) for m in search_corpus(query, k=3, shard=Shard(i, 8))]
    merged.sort(key=lambda m: (-m["score"], m["id"]))
    assert merged[:3] == search_corpus(query, k=3)


def test_tokenize_lowercases_and_drops_stop_words() -> None:
    """Tokens are lower-case words and numbers without stop words."""
    assert tokenize("The Apollo 11 mission, to the Moon!") == ["apollo", "11", "mission", "moon"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "query"),
        ({"query": 3}, "query"),
        ("raft", "payload"),
        ({"query": "raft", "k": 0}, "k"),
        ({"query": "raft", "k": "5"}, "k"),
        ({"query": "raft", "k": True}, "k"),
    ],
)
def test_bad_search_payload_names_field(payload: Any, field: str) -> None:
    """A missing or wrong field is a HandlerError 400 whose message starts with its name."""
    with pytest.raises(HandlerError) as info:
        parse_search_payload(payload)
    assert info.value.status == 400
    assert info.value.message.startswith(field)


def test_search_payload_defaults_k() -> None:
    """k defaults to 5."""
    assert parse_search_payload({"query": "raft"}) == ("raft", DEFAULT_K)
