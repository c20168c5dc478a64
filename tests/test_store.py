"""Edge cases of evalkit.engine.store, each checked against a hand-derived expectation (issue 11: mutation kill rate)."""
import codecs
import fcntl
import json
import locale
import os
import sys

import pytest

from evalkit.engine.store import (
    RunLockedError,
    RunStore,
    RunStoreError,
    encode_record,
    read_records,
    unserializable_field,
    write_json_atomic,
)

NAN_WHY = "ValueError: Out of range float values are not JSON compliant"
# problem() encodes the value alone: the quote opening the JSON string is position 0
SURROGATE_WHY = "UnicodeEncodeError: 'utf-8' codec can't encode character '\\ud800' in position 1: surrogates not allowed"


def _old_mtime(path):
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    return path.stat().st_mtime_ns


# -- read_records ----------------------------------------------------------------------------------

def test_missing_log_reads_as_no_records(tmp_path):
    assert read_records(tmp_path / "samples.jsonl") == []
    assert read_records(tmp_path / "samples.jsonl", repair=True) == []
    assert not (tmp_path / "samples.jsonl").exists()


def test_empty_log_reads_as_no_records(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b"")
    assert read_records(path, repair=True) == []
    assert path.read_bytes() == b""


def test_clean_log_reads_every_line_and_is_not_touched_by_repair(tmp_path):
    path = tmp_path / "samples.jsonl"
    # spaces and a raw U+2028 inside a string: lines split on b"\n" only
    text = '{"key": "a", "v": 1}\n{"key": "b", "text": "x\u2028y z"}\n'
    path.write_bytes(text.encode("utf-8"))
    mtime = _old_mtime(path)
    assert read_records(path, repair=True) == [{"key": "a", "v": 1}, {"key": "b", "text": "x\u2028y z"}]
    assert path.read_bytes() == text.encode("utf-8")
    assert path.stat().st_mtime_ns == mtime  # a clean log is not even truncated to its own length


def test_single_clean_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"key": "only"}\n')
    assert read_records(path) == [{"key": "only"}]


def test_torn_last_line_is_ignored_without_repair(tmp_path):
    path = tmp_path / "samples.jsonl"
    raw = b'{"key": "a"}\n{"key": "bb"}\n{"key": "c", "tr'
    path.write_bytes(raw)
    mtime = _old_mtime(path)
    assert read_records(path) == [{"key": "a"}, {"key": "bb"}]
    assert path.read_bytes() == raw and path.stat().st_mtime_ns == mtime


def test_torn_last_line_is_cut_at_its_first_byte_with_repair(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"key": "a"}\n{"key": "bb"}\n{"key": "c", "tr')
    assert read_records(path, repair=True) == [{"key": "a"}, {"key": "bb"}]
    # 13 + 14 bytes of whole lines are kept, newlines included
    assert path.read_bytes() == b'{"key": "a"}\n{"key": "bb"}\n'


def test_last_line_without_newline_counts_as_torn_even_when_it_parses(tmp_path):
    # the write of a record and its newline is one call: no newline means it did not finish
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"key": "a"}\n{"key": "b"}')
    assert read_records(path) == [{"key": "a"}]
    assert read_records(path, repair=True) == [{"key": "a"}]
    assert path.read_bytes() == b'{"key": "a"}\n'


def test_only_a_torn_line_repairs_to_an_empty_log(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"key": "a"')
    assert read_records(path, repair=True) == []
    assert path.read_bytes() == b""


def test_damaged_final_line_with_newline_is_cut_like_a_torn_one(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"key": "a"}\n{"key": "b"}\n\x00\x00\x00\n')
    assert read_records(path) == [{"key": "a"}, {"key": "b"}]
    assert read_records(path, repair=True) == [{"key": "a"}, {"key": "b"}]
    assert path.read_bytes() == b'{"key": "a"}\n{"key": "b"}\n'


def test_damaged_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    raw = b'{"key": "a"}\n{"key": "b"}\nnot json\n{"key": "d"}\n'
    path.write_bytes(raw)
    expected = f"{path}: line 3 is not valid JSON; the run log is damaged"
    for repair in (False, True):
        with pytest.raises(RunStoreError) as info:
            read_records(path, repair=repair)
        assert str(info.value) == expected
    assert path.read_bytes() == raw


def test_damaged_line_before_a_torn_one_is_still_an_error(tmp_path):
    # line 2 of 3 is bad and the file does not end in a newline: only the last line may be torn
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"key": "a"}\n{bad\n{"key": "c"')
    with pytest.raises(RunStoreError) as info:
        read_records(path, repair=True)
    assert str(info.value) == f"{path}: line 2 is not valid JSON; the run log is damaged"


def test_damaged_first_line_is_line_1(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{bad\n{"key": "b"}\n')
    with pytest.raises(RunStoreError) as info:
        read_records(path)
    assert str(info.value) == f"{path}: line 1 is not valid JSON; the run log is damaged"


def test_empty_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"key": "a"}\n\n{"key": "c"}\n')
    with pytest.raises(RunStoreError) as info:
        read_records(path)
    assert str(info.value) == f"{path}: line 2 is not valid JSON; the run log is damaged"


# -- encode_record / unserializable_field ----------------------------------------------------------

def test_encoded_record_is_one_compact_utf8_line():
    line = encode_record({"key": "é", "v": [1, 2.5], "t": "a\u2028b"})
    assert line == '{"key": "é", "v": [1, 2.5], "t": "a\u2028b"}\n'


def test_record_with_nan_names_the_key_and_field():
    with pytest.raises(RunStoreError) as info:
        encode_record({"key": "s1", "ok": 1, "score": float("nan")})
    assert str(info.value) == f"record 's1': field 'score': {NAN_WHY}"


def test_record_with_a_lone_surrogate_names_the_field():
    with pytest.raises(RunStoreError) as info:
        encode_record({"key": "s2", "output": "\ud800"})
    assert str(info.value) == f"record 's2': field 'output': {SURROGATE_WHY}"


def test_record_with_an_object_names_the_field_and_a_record_without_key_says_none():
    with pytest.raises(RunStoreError) as info:
        encode_record({"raw": {1, 2}})
    assert str(info.value) == "record None: field 'raw': TypeError: Object of type set is not JSON serializable"


def test_fine_record_has_no_unserializable_field():
    assert unserializable_field({"key": "a", "v": [1, {"x": "é"}]}) is None


def test_first_bad_field_is_named():
    record = {"key": "a", "first": float("inf"), "second": object()}
    assert unserializable_field(record) == f"field 'first': {NAN_WHY}"


def test_bad_field_inside_a_dict_is_named_with_its_path():
    record = {"key": "a", "meta": {"fine": 1, "bad": float("nan"), "worse": object()}}
    assert unserializable_field(record) == f"field 'meta.bad': {NAN_WHY}"


def test_dict_whose_only_problem_is_a_key_is_named_as_a_whole():
    record = {"key": "a", "meta": {(1, 2): "x"}}
    assert unserializable_field(record) == ("field 'meta': TypeError: keys must be str, int, float, bool or None, "
                                            "not tuple")


def test_record_whose_own_keys_are_not_json():
    assert unserializable_field({"key": "a", (1, 2): 3}) == "the record's keys: not JSON"


def test_long_reason_is_cut_to_200_characters():
    cls = type("C" * 300, (), {})
    message = "Object of type " + "C" * 300 + " is not JSON serializable"
    assert unserializable_field({"key": "a", "obj": cls()}) == f"field 'obj': TypeError: {message[:200]}"


# -- write_json_atomic / run.json ------------------------------------------------------------------

def test_run_json_is_indented_utf8_with_a_final_newline(tmp_path):
    path = tmp_path / "run.json"
    write_json_atomic(path, {"name": "é", "v": [1, 2]})
    assert path.read_bytes() == '{\n "name": "é",\n "v": [\n  1,\n  2\n ]\n}\n'.encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_run_json_refuses_nan_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"old": 1}\n')
    with pytest.raises(ValueError, match="Out of range float"):
        write_json_atomic(path, {"v": float("nan")})
    assert path.read_text() == '{"old": 1}\n'


def test_store_reads_back_the_run_it_wrote(tmp_path):
    store = RunStore(tmp_path)
    assert store.read_run() is None
    store.write_run({"id": "r1", "metrics": {"acc": 0.5}})
    assert json.loads((tmp_path / "run.json").read_text()) == {"id": "r1", "metrics": {"acc": 0.5}}
    assert store.read_run() == {"id": "r1", "metrics": {"acc": 0.5}}


def test_write_run_into_a_missing_folder_names_the_file(tmp_path):
    store = RunStore(tmp_path / "gone")
    with pytest.raises(RunStoreError) as info:
        store.write_run({"id": "r1"})
    message = str(info.value)
    assert message.startswith(f"cannot write {tmp_path / 'gone' / 'run.json'}: [Errno 2] No such file or directory")


# -- RunStore: locking -----------------------------------------------------------------------------

def test_acquire_creates_nested_folders_and_writes_the_pid(tmp_path):
    run_dir = tmp_path / "a" / "b"
    with RunStore(run_dir) as store:
        assert store.dir == run_dir
        assert (run_dir / ".lock").read_text() == str(os.getpid())  # readable while held: flushed


def test_acquire_in_an_existing_folder_replaces_an_old_pid(tmp_path):
    (tmp_path / ".lock").write_text("99999999")
    with RunStore(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())


def test_second_store_is_refused_with_the_holders_pid(tmp_path):
    with RunStore(tmp_path), pytest.raises(RunLockedError) as info:
        RunStore(tmp_path).acquire()
    assert str(info.value) == (f"another evalkit process (pid {os.getpid()}) is writing {tmp_path}; "
                               "wait for it to finish or stop it, then run the same command again to resume")


def test_holder_without_a_pid_yet_is_unknown(tmp_path):
    with open(tmp_path / ".lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunLockedError, match=r"\(pid unknown\)"):
            RunStore(tmp_path).acquire()


def test_acquire_twice_is_a_no_op_and_release_frees_the_lock(tmp_path):
    store = RunStore(tmp_path)
    store.acquire()
    store.acquire()
    with pytest.raises(RunLockedError):
        RunStore(tmp_path).acquire()
    store.release()
    other = RunStore(tmp_path)
    other.acquire()  # free now
    with pytest.raises(RunLockedError):
        store.acquire()  # and really taken again by `other`, not short-cut by a stale handle
    other.release()
    store.acquire()
    with pytest.raises(RunLockedError):
        RunStore(tmp_path).acquire()
    store.release()


def test_release_of_a_store_never_acquired_is_harmless(tmp_path):
    RunStore(tmp_path).release()
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing locked
    with RunStore(tmp_path):
        pass
    other = RunStore(tmp_path)
    other.acquire()  # the lock taken above was given back
    other.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


# -- RunStore: records -----------------------------------------------------------------------------

def test_append_writes_exact_lines_and_release_closes_the_file(tmp_path):
    with RunStore(tmp_path) as store:
        store.append([{"key": "a", "v": "é"}, {"key": "b"}])
        # flushed per call: another reader sees it before the store is closed
        assert (tmp_path / "samples.jsonl").read_bytes() == '{"key": "a", "v": "é"}\n{"key": "b"}\n'.encode()
    with RunStore(tmp_path) as store:
        store.append([{"key": "a", "v": 2}])
    assert (tmp_path / "samples.jsonl").read_bytes() == \
        '{"key": "a", "v": "é"}\n{"key": "b"}\n{"key": "a", "v": 2}\n'.encode()


def test_append_of_a_bad_record_writes_nothing(tmp_path):
    with RunStore(tmp_path) as store:
        store.append([{"key": "a"}])
        with pytest.raises(RunStoreError, match="record 'b': field 'x'"):
            store.append([{"key": "ok"}, {"key": "b", "x": float("nan")}])
    assert (tmp_path / "samples.jsonl").read_bytes() == b'{"key": "a"}\n'


def test_append_to_an_unwritable_path_names_it(tmp_path):
    store = RunStore(tmp_path)
    (tmp_path / "samples.jsonl").mkdir()
    with pytest.raises(RunStoreError) as info:
        store.append([{"key": "a"}])
    assert str(info.value) == f"cannot write {tmp_path / 'samples.jsonl'}: [Errno 21] Is a directory: " \
                              f"'{tmp_path / 'samples.jsonl'}'"


def test_load_keeps_the_latest_record_of_a_key_and_repairs_only_when_locked(tmp_path):
    path = tmp_path / "samples.jsonl"
    raw = b'{"key": "a", "v": 1}\n{"key": "b", "v": 1}\n{"key": "a", "v": 2}\n{"key": "c"'
    path.write_bytes(raw)
    store = RunStore(tmp_path)
    assert store.load() == {"a": {"key": "a", "v": 2}, "b": {"key": "b", "v": 1}}
    assert path.read_bytes() == raw  # an unlocked reader (`evalkit check`) never writes
    with store:
        assert store.load() == {"a": {"key": "a", "v": 2}, "b": {"key": "b", "v": 1}}
        assert path.read_bytes() == b'{"key": "a", "v": 1}\n{"key": "b", "v": 1}\n{"key": "a", "v": 2}\n'


def test_iter_records_yields_the_latest_per_key_in_first_seen_order(tmp_path):
    (tmp_path / "samples.jsonl").write_bytes(b'{"key": "a", "v": 1}\n{"key": "b"}\n{"key": "a", "v": 2}\n')
    assert list(RunStore(tmp_path).iter_records()) == [{"key": "a", "v": 2}, {"key": "b"}]


def test_rewrite_replaces_the_log_and_appending_continues_after_it(tmp_path):
    with RunStore(tmp_path) as store:
        store.append([{"key": "old"}])
        store.rewrite([{"key": "n1", "t": "é"}, {"key": "n2"}])
        store.append([{"key": "n3"}])
    assert (tmp_path / "samples.jsonl").read_bytes() == '{"key": "n1", "t": "é"}\n{"key": "n2"}\n{"key": "n3"}\n'.encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "samples.jsonl"]


def test_rewrite_with_a_record_that_cannot_be_encoded_changes_no_file(tmp_path):
    with RunStore(tmp_path) as store:
        store.append([{"key": "a"}])
        with pytest.raises(ValueError):
            store.rewrite([{"key": "b"}, {"key": "c", "v": float("nan")}])
    assert (tmp_path / "samples.jsonl").read_bytes() == b'{"key": "a"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "samples.jsonl"]  # no empty temp file left


def test_compact_orders_keep_order_first_then_the_rest_as_first_seen(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"key": "a", "v": 1}\n{"key": "b"}\n{"key": "a", "v": 2}\n{"key": "c"}\n')
    with RunStore(tmp_path) as store:
        store.compact(["c", "missing"])
    assert path.read_bytes() == b'{"key": "c"}\n{"key": "a", "v": 2}\n{"key": "b"}\n'


def test_compact_without_order_keeps_first_seen_order(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"key": "b", "v": 1}\n{"key": "a"}\n{"key": "b", "v": 2}\n')
    with RunStore(tmp_path) as store:
        store.compact()
    assert path.read_bytes() == b'{"key": "b", "v": 2}\n{"key": "a"}\n'


def test_compact_of_a_log_without_duplicates_leaves_the_file_alone(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"key":"b"}\n{"key":"a"}\n')  # not in encode_record's spacing: a rewrite would show
    inode = path.stat().st_ino
    with RunStore(tmp_path) as store:
        store.compact(["a", "b"])
    assert path.read_bytes() == b'{"key":"b"}\n{"key":"a"}\n' and path.stat().st_ino == inode


def test_a_store_can_be_locked_and_appended_to_again_after_release(tmp_path):
    store = RunStore(tmp_path)
    with store:
        store.append([{"key": "a"}])
    with store:
        store.append([{"key": "b"}])
    assert (tmp_path / "samples.jsonl").read_bytes() == b'{"key": "a"}\n{"key": "b"}\n'


@pytest.fixture
def ascii_locale():
    """The C locale's ASCII as the locale encoding, as on a host whose locale is not UTF-8."""
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    if sys.flags.utf8_mode or codecs.lookup(locale.getpreferredencoding(False)).name == "utf-8":
        locale.setlocale(locale.LC_CTYPE, before)
        pytest.skip("the C locale's encoding is UTF-8 here")
    yield
    locale.setlocale(locale.LC_CTYPE, before)


def test_log_is_utf8_whatever_the_locale(tmp_path, ascii_locale):
    with RunStore(tmp_path) as store:
        store.append([{"key": "é"}])
        assert (tmp_path / "samples.jsonl").read_bytes() == b'{"key": "\xc3\xa9"}\n'
        store.rewrite([{"key": "ü"}])
    assert (tmp_path / "samples.jsonl").read_bytes() == b'{"key": "\xc3\xbc"}\n'


def test_temp_file_left_by_a_crash_mid_rewrite_is_gone_after_the_next_rewrite(tmp_path):
    # kill -9 between writing the temp file and renaming it leaves samples.jsonl.tmp behind
    (tmp_path / "samples.jsonl.tmp").write_bytes(b'{"key": "half')
    with RunStore(tmp_path) as store:
        store.rewrite([{"key": "a"}])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "samples.jsonl"]
    assert (tmp_path / "samples.jsonl").read_bytes() == b'{"key": "a"}\n'


def test_temp_file_left_by_a_crash_mid_write_run_is_gone_after_the_next_write(tmp_path):
    (tmp_path / "run.json.tmp").write_text('{"id": "ha')
    RunStore(tmp_path).write_run({"id": "r2"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
    assert (tmp_path / "run.json").read_text() == '{\n "id": "r2"\n}\n'


def test_run_record_is_utf8_whatever_the_locale(tmp_path, ascii_locale):
    """run.json is written and read as UTF-8 like samples.jsonl: under an ASCII locale a task name with an accent
    was unwritable (UnicodeEncodeError after the whole run), and under latin-1 it was written in latin-1."""
    from evalkit.results.leaderboard import load_run

    with RunStore(tmp_path) as store:
        store.write_run({"task": "écoute", "n": 1})
    assert (tmp_path / "run.json").read_bytes() == b'{\n "task": "\xc3\xa9coute",\n "n": 1\n}\n'
    assert RunStore(tmp_path).read_run() == {"task": "écoute", "n": 1}
    assert load_run(tmp_path) == {"task": "écoute", "n": 1}
