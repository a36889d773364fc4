"""`prefork tune` without measuring: grid parsing, the recommendation over made-up results,
the table, and every kind of bad input, which must be refused before any server starts."""

import argparse
import os
import subprocess
import sys

import pytest

from conftest import REPO, run_cli
from prefork.tune import tuner
from prefork.tune.server_under_test import connect_address


def run(workers, threads, concurrency, throughput, p99_ms, errors=0):
    return {"workers": workers, "threads": threads, "concurrency": concurrency, "throughput": throughput,
            "p50_ms": p99_ms / 4, "p99_ms": p99_ms, "errors": errors, "cpu_percent": 100.0, "uss_mb": 3.0}


# -- grid parsing -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [("1,2,4", [1, 2, 4]), ("8, 1,8", [1, 8]), ("3", [3])])
def test_count_list_is_sorted_and_distinct(text, expected):
    assert tuner.count_list(64)(text) == expected


@pytest.mark.parametrize("text, message", [
    ("0", "must be between 1 and 64, got 0"), ("65", "must be between 1 and 64, got 65"),
    ("a,b", "'a' is not a whole number"), ("1,,2", "'' is not a whole number"), ("-1", "'-1' is not"),
    ("2.5", "'2.5' is not"), ("", "'' is not"),
])
def test_count_list_refuses_what_is_not_a_list_of_whole_numbers(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        tuner.count_list(64)(text)


def test_warmup_is_a_fifth_of_the_duration_at_most_a_second():
    assert tuner.warmup(1) == 0.2
    assert tuner.warmup(3) == pytest.approx(0.6)
    assert tuner.warmup(30) == 1.0


@pytest.mark.parametrize("logged, expected", [
    ("127.0.0.1:8000", ("127.0.0.1", 8000)), ("0.0.0.0:8000", ("127.0.0.1", 8000)), (":8000", ("127.0.0.1", 8000)),
    ("[::]:9000", ("::1", 9000)), ("[::1]:9000", ("::1", 9000)), ("unix:/tmp/a.sock", "/tmp/a.sock"),
])
def test_connect_address_turns_a_wildcard_into_loopback(logged, expected):
    assert connect_address(logged) == expected


# -- the recommendation ------------------------------------------------------------------------------

def test_the_smallest_pool_within_5_percent_of_the_best_wins():
    results = [run(1, 1, 16, 8_000, 3.0), run(2, 1, 16, 9_600, 3.0), run(4, 1, 16, 10_000, 3.0),
               run(4, 1, 64, 9_000, 9.0)]
    chosen = tuner.recommend(results)
    assert (chosen["workers"], chosen["threads"], chosen["concurrency"]) == (2, 1, 16)
    assert chosen["met_p99"] is None
    assert chosen["reason"] == ("2 workers x 1 thread is the smallest pool within 5 % of the best throughput "
                                "(10,000 req/s by 4 workers x 1 thread at 16 clients): 9,600 req/s at 16 clients, "
                                "p99 3.00 ms.")


def test_exactly_5_percent_below_the_best_is_within():
    chosen = tuner.recommend([run(1, 1, 4, 9_500, 1.0), run(2, 1, 4, 10_000, 1.0)])
    assert (chosen["workers"], chosen["threads"]) == (1, 1)
    chosen = tuner.recommend([run(1, 1, 4, 9_499, 1.0), run(2, 1, 4, 10_000, 1.0)])
    assert (chosen["workers"], chosen["threads"]) == (2, 1)
    assert chosen["reason"].startswith("2 workers x 1 thread had the best throughput (10,000 req/s at 4 clients")


def test_size_is_workers_times_threads_then_fewer_workers_break_ties():
    results = [run(4, 1, 16, 10_000, 2.0), run(1, 4, 16, 9_900, 2.0), run(2, 2, 16, 9_950, 2.0),
               run(1, 8, 16, 10_000, 2.0)]
    assert (tuner.recommend(results)["workers"], tuner.recommend(results)["threads"]) == (1, 4)
    results.append(run(2, 1, 16, 9_600, 2.0))
    assert (tuner.recommend(results)["workers"], tuner.recommend(results)["threads"]) == (2, 1)


def test_a_pool_is_judged_by_its_best_concurrency():
    results = [run(1, 1, 4, 2_000, 1.0), run(1, 1, 64, 9_800, 8.0), run(2, 1, 4, 3_000, 1.0),
               run(2, 1, 64, 10_000, 6.0)]
    chosen = tuner.recommend(results)
    assert (chosen["workers"], chosen["concurrency"], chosen["throughput"]) == (1, 64, 9_800)


def test_the_p99_target_leaves_out_slow_runs_before_the_best_is_found():
    results = [run(1, 1, 64, 12_000, 20.0), run(1, 1, 16, 6_000, 4.0), run(2, 1, 16, 9_000, 4.5),
               run(4, 1, 16, 9_200, 5.0), run(4, 1, 64, 15_000, 30.0)]
    chosen = tuner.recommend(results, p99_target=5.0)
    assert (chosen["workers"], chosen["threads"], chosen["met_p99"]) == (2, 1, True)
    assert "the best throughput within the p99 target of 5 ms (9,200 req/s" in chosen["reason"]
    assert "9,200 req/s by 4 workers x 1 thread" in chosen["reason"]
    assert tuner.recommend(results)["workers"] == 4         # without a target: 15,000 req/s wins


def test_nothing_under_the_p99_target_recommends_the_lowest_p99():
    results = [run(1, 1, 4, 5_000, 3.0), run(2, 1, 4, 7_000, 2.5), run(2, 1, 16, 9_000, 6.0)]
    chosen = tuner.recommend(results, p99_target=1.0)
    assert (chosen["workers"], chosen["concurrency"], chosen["met_p99"]) == (2, 4, False)
    assert chosen["reason"] == ("No run met the p99 target of 1 ms; 2 workers x 1 thread had the lowest p99, "
                                "2.50 ms at 4 clients (7,000 req/s).")


def test_runs_with_errors_are_never_recommended():
    # A 1x1 pool driven with 16 keep-alive connections serves one and starves the rest.
    results = [run(1, 1, 16, 20_000, 0.2, errors=15), run(4, 4, 16, 15_000, 2.0), run(2, 4, 16, 14_500, 2.0)]
    chosen = tuner.recommend(results)
    assert (chosen["workers"], chosen["threads"]) == (2, 4)


def test_nothing_to_recommend_when_every_run_failed():
    chosen = tuner.recommend([run(1, 1, 4, 0, 1.0, errors=400), run(2, 1, 4, 100, 1.0, errors=3)])
    assert chosen["workers"] is None and chosen["threads"] is None
    assert "nothing to recommend" in chosen["reason"]


def test_the_recommendation_says_the_mode_and_warns_about_a_new_connection_per_request():
    results = [run(1, 1, 4, 9_000, 1.0), run(2, 1, 4, 9_100, 1.0)]
    chosen = tuner.recommend(results)
    assert (chosen["workers"], chosen["mode"]) == (1, "new connection per request")
    assert chosen["note"] == tuner.NEW_CONNECTION_NOTE and "--keepalive" in chosen["note"]
    chosen = tuner.recommend(results, keepalive=True)
    assert (chosen["workers"], chosen["mode"], chosen["note"]) == (1, "keep-alive", None)
    nothing = tuner.recommend([run(1, 1, 4, 0, 1.0, errors=5)])
    assert (nothing["workers"], nothing["mode"], nothing["note"]) == (None, "new connection per request", None)


def test_the_mode_line_names_the_connections_and_the_greeting():
    assert tuner.describe_mode({"keepalive": False, "concurrency": [4, 16], "greeting": None}) == (
        "a new connection per request, 4, 16 clients at a time")
    assert tuner.describe_mode({"keepalive": True, "concurrency": [8], "greeting": None}) == (
        "keep-alive, 8 connections, each held for the whole run")
    assert tuner.describe_mode({"keepalive": True, "concurrency": [8], "greeting": "line"}) == (
        "keep-alive, 8 connections, each held for the whole run; a greeting of one line first")
    assert tuner.describe_mode({"keepalive": False, "concurrency": [1], "greeting": 11}).endswith(
        "; a greeting of 11 bytes first")


@pytest.mark.parametrize("text, expected", [("line", "line"), ("11", 11), ("1", 1), ("65536", 65536)])
def test_greeting_is_a_line_or_a_number_of_bytes(text, expected):
    assert tuner.greeting(text) == expected


@pytest.mark.parametrize("text, message", [
    ("0", "must be between 1 and 65536 bytes, got 0"), ("65537", "must be between 1 and 65536 bytes, got 65537"),
    ("lines", "expected 'line' or a number of bytes, got 'lines'"), ("-1", "got '-1'"), ("", "got ''"),
    ("2.5", "got '2.5'"),
])
def test_greeting_refuses_anything_else(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        tuner.greeting(text)


def test_a_server_that_speaks_first_is_served_without_deferred_accept():
    assert tuner.serve_options({"greeting": None}) == []
    assert tuner.serve_options({"greeting": "line"}) == tuner.serve_options({"greeting": 3}) == ["--no-defer-accept"]


def test_exit_status_is_0_with_a_recommendation_else_1_naming_the_most_common_error():
    good, bad = run(1, 1, 4, 9_000, 1.0), run(2, 1, 4, 0, 1.0, errors=90)
    bad["error_kinds"] = {"more reply bytes than expected": 88, "reset": 2}
    assert tuner.exit_status([good, bad], tuner.recommend([good, bad])) == (0, None)
    other = dict(run(1, 1, 4, 50, 1.0, errors=3), error_kinds={"reset": 3})
    assert tuner.exit_status([bad, other], tuner.recommend([bad, other])) == (
        1, "no run succeeded; the most common error: more reply bytes than expected (88 of 93 errors); "
           "is --response-bytes right, or does the server speak first (--greeting)?")
    silent = run(1, 1, 4, 0, 1.0)
    silent["p99_ms"] = None
    assert tuner.exit_status([silent], tuner.recommend([silent])) == (1, "no run succeeded: no request was answered")
    assert tuner.exit_status([], tuner.recommend([])) == (1, "no run succeeded: no request was answered")


def test_table_has_a_row_per_run_in_grid_order():
    results = [run(2, 1, 4, 9_812.4, 4.1), run(1, 1, 16, 5_000, 2.0), run(1, 1, 4, 4_000, 1.0)]
    results[0]["uss_mb"] = None
    lines = tuner.format_table(results).splitlines()
    assert [cell.strip() for cell in lines[0].strip("|").split("|")] == [
        "workers", "threads", "clients", "req/s", "p50 ms", "p99 ms", "errors", "CPU %", "USS MB", "conns/worker"]
    assert [line.split("|")[1:4] for line in lines[2:]] == [
        ["       1 ", "       1 ", "       4 "], ["       1 ", "       1 ", "      16 "],
        ["       2 ", "       1 ", "       4 "]]
    assert "9,812" in lines[4] and lines[4].rstrip(" |").endswith("-")


def test_progress_line():
    assert tuner.progress_line(run(2, 1, 16, 9_812, 4.1)) == "2 workers x 1 thread, 16 clients: 9,812 req/s, p99 4.1 ms"
    line = tuner.progress_line(dict(run(1, 4, 1, 10, 1.0, errors=2), error_kinds={"refused": 2}))
    assert line == "1 worker x 4 threads, 1 client: 10 req/s, p99 1.0 ms, 2 errors (refused: 2)"


# -- bad input, through the command ---------------------------------------------------------------------

HELLO = "hello"


@pytest.mark.parametrize("args, expected, code", [
    ([HELLO, "--workers", "0"], "argument --workers: must be between 1 and", 2),
    ([HELLO, "--workers", "a,b"], "argument --workers: 'a' is not a whole number", 2),
    ([HELLO, "--concurrency", "4,,8"], "argument --concurrency: '' is not a whole number", 2),
    ([HELLO, "--duration", "0"], "argument --duration: must be more than 0, got 0", 2),
    ([HELLO, "--p99", "fast"], "argument --p99: 'fast' is not a number", 2),
    ([HELLO, "--request", "/nonexistent/request.bin"], "cannot read --request file /nonexistent/request.bin", 2),
    ([HELLO, "--request", "/dev/null"], "--request file /dev/null is empty", 2),
    ([HELLO, "--response-bytes", "6"], "--response-bytes applies to --keepalive only", 2),
    ([HELLO, "--greeting", "0"], "argument --greeting: must be between 1 and 65536 bytes, got 0", 2),
    ([HELLO, "--greeting", "banner"], "argument --greeting: expected 'line' or a number of bytes, got 'banner'", 2),
    (["no_such_module_anywhere:Handler"], "cannot import handler 'no_such_module_anywhere:Handler'", 2),
    (["prefork_workers.hello:NoSuchClass"], "module 'prefork_workers.hello' has no 'NoSuchClass'", 2),
    (["prefork_workers.hello"], "bad handler 'prefork_workers.hello': expected MODULE:CLASS", 2),
    ([HELLO, "-b", "udp://127.0.0.1:0"], "tune drives stream sockets only", 2),
    ([HELLO, "-b", "127.0.0.1:http"], "port 'http' is not a number", 2),
    ([HELLO, "--json", "/nonexistent/dir/out.json"], "cannot write /nonexistent/dir/out.json", 2),
    ([HELLO, "--bogus"], "unrecognized arguments: --bogus (see 'prefork tune --help')", 2),
    ([], "the following arguments are required: MODULE:CLASS", 2),
])
def test_bad_input_gets_one_line_and_starts_nothing(args, expected, code):
    returncode, out, err = run_cli("tune", *args)
    assert (returncode, out) == (code, "")
    assert err.startswith("prefork: error: ") and err.count("\n") == 1, err
    assert expected in err


def test_plot_without_matplotlib_names_the_fix_before_measuring(tmp_path):
    shadow = tmp_path / "matplotlib"          # an import of matplotlib that fails, as when it is missing
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([sys.executable, "-m", "prefork", "tune", HELLO, "--plot", str(tmp_path / "p.png")],
                          cwd=REPO, capture_output=True, text=True, timeout=20, env=env)
    assert proc.returncode == 2
    assert proc.stderr == "prefork: error: --plot needs matplotlib: pip install 'prefork[plot]'\n"
    assert not (tmp_path / "p.png").exists()


def test_help_lists_tune():
    returncode, out, _ = run_cli("--help")
    assert returncode == 0 and "tune" in out
    returncode, out, _ = run_cli("tune", "--help")
    assert returncode == 0 and "--concurrency" in out and "--keepalive" in out and "--greeting" in out
