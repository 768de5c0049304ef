"""Tests for specdec.data.sources: formats, error handling, builtins and Hub sources."""

from __future__ import annotations

import gzip
import json

import pytest

from specdec.data import sources
from specdec.data.sources import BUILTIN_SOURCES, DataError, load_conversations, user_turns


def _write_jsonl(path, lines):
    """Write raw lines (already strings) or records (dumped to JSON) to a .jsonl file."""
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_sharegpt_from_value_and_role_content(tmp_path):
    path = _write_jsonl(
        tmp_path / "sg.jsonl",
        [
            {"id": "a", "conversations": [
                {"from": "system", "value": "Be nice."},
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello!"},
            ]},
            {"conversations": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
        ],
    )
    assert load_conversations(str(path)) == [
        [
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ],
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
    ]


def test_messages_in_json_list(tmp_path):
    path = tmp_path / "msgs.json"
    path.write_text(json.dumps([{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}]))
    assert load_conversations(str(path)) == [[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]]


def test_alpaca_with_and_without_input_and_output(tmp_path):
    path = _write_jsonl(
        tmp_path / "alpaca.jsonl",
        [
            {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
            {"instruction": "Name a colour.", "input": "", "output": ""},
        ],
    )
    assert load_conversations(str(path)) == [
        [{"role": "user", "content": "Translate.\n\nBonjour"}, {"role": "assistant", "content": "Hello"}],
        [{"role": "user", "content": "Name a colour."}],
    ]


def test_question_turns_and_prompt_records(tmp_path):
    path = _write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"question_id": 1, "category": "writing", "turns": ["First?", "Second?"]},
            {"prompt": "P1", "completion": "C1"},
            {"prompt": "P2"},
        ],
    )
    assert load_conversations(str(path)) == [
        [{"role": "user", "content": "First?"}, {"role": "user", "content": "Second?"}],
        [{"role": "user", "content": "P1"}, {"role": "assistant", "content": "C1"}],
        [{"role": "user", "content": "P2"}],
    ]


def test_gsm8k_question_answer_records(tmp_path):
    path = _write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": "2 + 2?", "answer": "2 + 2 = 4\n#### 4"}, {"question": "3 + 3?"}])
    assert load_conversations(str(path)) == [
        [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4\n#### 4"}],
        [{"role": "user", "content": "3 + 3?"}],
    ]


def test_a_folder_of_gzipped_and_plain_shards_is_read_in_name_order_with_shard_and_line_in_errors(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    with gzip.open(folder / "shard-00001.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"prompt": "second"}) + "\n" + '{"prompt": "broken' + "\n")
    _write_jsonl(folder / "shard-00000.jsonl", [{"prompt": "first"}])
    (folder / "README.md").write_text("a data card, not data")
    with pytest.warns(UserWarning, match="skipped 1"):
        assert [c[0]["content"] for c in load_conversations(str(folder))] == ["first", "second"]
    with pytest.raises(DataError, match=r"shard-00001\.jsonl\.gz:2: invalid JSON"):
        load_conversations(str(folder), on_error="raise")
    (folder / "shard-00000.jsonl").unlink()
    (folder / "shard-00001.jsonl.gz").unlink()
    with pytest.raises(DataError, match="holds no .jsonl or .jsonl.gz file"):
        load_conversations(str(folder))


def _corrupt_file(tmp_path):
    """Five records; lines 2 (bad JSON), 4 (unknown shape) and 5 (empty conversation) are bad."""
    return _write_jsonl(
        tmp_path / "corrupt.jsonl",
        [
            {"prompt": "ok 1"},
            '{"prompt": "broken',
            {"prompt": "ok 2"},
            {"text": "no known keys"},
            {"conversations": []},
        ],
    )


def test_corrupt_records_are_skipped_with_one_warning(tmp_path):
    path = _corrupt_file(tmp_path)
    with pytest.warns(UserWarning) as record:
        conversations = load_conversations(str(path))
    assert [c[0]["content"] for c in conversations] == ["ok 1", "ok 2"]
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 3" in message and "2, 4, 5" in message


def test_corrupt_records_raise_with_file_and_line(tmp_path):
    path = _corrupt_file(tmp_path)
    with pytest.raises(DataError, match=rf"{path}:2: invalid JSON"):
        load_conversations(str(path), on_error="raise")
    path.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"conversations": [{"from": "bot", "value": "x"}]}) + "\n")
    with pytest.raises(DataError, match=r":2: .*unknown role 'bot'"):
        load_conversations(str(path), on_error="raise")


def test_bad_on_error_value_lists_choices(tmp_path):
    with pytest.raises(ValueError, match="skip.*raise"):
        load_conversations("mt-bench", on_error="ignore")


def test_missing_file_names_path_and_builtins(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError) as err:
        load_conversations(str(missing))
    assert str(missing) in str(err.value)
    assert all(name in str(err.value) for name in BUILTIN_SOURCES)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    with pytest.raises(ValueError, match=r"\.json, \.jsonl or \.jsonl\.gz"):
        load_conversations(str(path))


def test_builtin_sharegpt_prompts():
    conversations = load_conversations("sharegpt-prompts")
    assert len(conversations) >= 500
    assert all(len(c) == 1 and c[0]["role"] == "user" and 0 < len(c[0]["content"]) <= 2000 for c in conversations)


def test_builtin_mt_bench():
    conversations = load_conversations("mt-bench")
    assert len(conversations) == 80
    assert all([m["role"] for m in c] == ["user", "user"] for c in conversations)
    # 8 categories x 10 questions, read from the raw file to check nothing was dropped.
    raw = [json.loads(line) for line in (sources.ASSETS_DIR / BUILTIN_SOURCES["mt-bench"]).read_text().splitlines()]
    assert len({record["category"] for record in raw}) == 8
    assert [c[0]["content"] for c in conversations] == [record["turns"][0] for record in raw]


def test_max_samples_keeps_first_valid(tmp_path):
    path = _corrupt_file(tmp_path)
    with pytest.warns(UserWarning, match="skipped 1"):
        conversations = load_conversations(str(path), max_samples=2)
    assert [c[0]["content"] for c in conversations] == ["ok 1", "ok 2"]
    assert len(load_conversations("sharegpt-prompts", max_samples=7)) == 7


def test_hf_source_calls_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return [{"messages": [{"role": "user", "content": "from the hub"}]}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_conversations("hf:org/chat-set:default", split="test") == [[{"role": "user", "content": "from the hub"}]]
    load_conversations("hf:org/other")
    assert calls == [("org/chat-set", "default", "test"), ("org/other", None, "train")]


def test_user_turns_drops_assistant_messages():
    conversation = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
    ]
    assert user_turns(conversation) == [conversation[0], conversation[1], conversation[3]]


def test_unreachable_hub_data_set_says_what_to_do(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="network access .* pass that path"):
        load_conversations("hf:org/chat")


def test_a_line_that_is_not_utf8_is_skipped_and_counted_like_corrupt_json(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"prompt": "ok 1"}\n' + '{"prompt": "caf\u00e9"}\n'.encode("latin-1") + b'{"prompt": "broken\n{"prompt": "ok 2"}\n')
    with pytest.warns(UserWarning) as record:
        conversations = load_conversations(str(path))
    assert [c[0]["content"] for c in conversations] == ["ok 1", "ok 2"]
    message = str(record[0].message)
    assert len(record) == 1 and "skipped 2" in message and "2, 3" in message and "not UTF-8 text" in message
    with pytest.raises(DataError, match=rf"{path}:2: not UTF-8 text"):
        load_conversations(str(path), on_error="raise")


def test_a_json_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"prompt": "caf\u00e9"}]'.encode("latin-1"))
    with pytest.raises(DataError, match=rf"{path}: not UTF-8 text .*save the file as UTF-8"):
        load_conversations(str(path), on_error="skip")


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json"])
def test_an_empty_file_or_one_with_only_bad_records_is_an_error(tmp_path, name):
    path = tmp_path / name
    path.write_text("\n")
    with pytest.raises(DataError, match=rf"{path} holds no usable conversation"):
        load_conversations(str(path))
    bad = _write_jsonl(tmp_path / "bad.jsonl", ['{"broken', {"text": "no known keys"}])
    with pytest.warns(UserWarning, match="skipped 2"), pytest.raises(DataError, match="holds no usable conversation"):
        load_conversations(str(bad))


def test_check_source_accepts_builtins_and_hub_names_and_refuses_other_extensions(tmp_path):
    assert sources.check_source("mt-bench") is None and sources.check_source("hf:org/set") is None
    path = tmp_path / "data.txt"
    path.write_text("hello\n")
    with pytest.raises(DataError, match=r"unsupported data file extension '\.txt'"):
        sources.check_source(str(path))
