"""Unit tests of conformance.py's TAP reading, verdicts and known-differences parsing
(run by run.sh before the suite: python3 -m unittest tests/conformance/test_conformance.py)."""
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conformance as c  # noqa: E402


def result(tap, exit="0", leaks=()):
    r = c.Result(exit=exit, leaks=list(leaks))
    r.read_tap(tap)
    return r


class TapTest(unittest.TestCase):
    def test_points_directives_and_nesting(self):
        points, plan, errors = c.parse_tap(
            "TAP version 13\nok 1 - a b\nnot ok 2 - c # TODO later\nok 3 # SKIP why\n"
            "ok 4 - has # a hash\n  ---\n  \"stdout\": |-\n    not ok 1 - nested\n  ...\n"
            "not ok 5\n1..5\n")
        self.assertEqual(points, [(1, "a b", "pass"), (2, "c", "todo"), (3, "", "skip"),
                                  (4, "has # a hash", "pass"), (5, "", "fail")])
        self.assertTrue(plan)
        self.assertEqual(errors, 0)

    def test_error_without_points_fails_the_program(self):
        r = result("TAP version 13\n  ---\n  \"error\": |-\n    Hooks MUST be called\n  ...\n1..0\n")
        self.assertIn((0, c.PROGRAM, "fail"), r.points)
        self.assertEqual(r.cell(), "0/0 error")

    def test_no_plan_or_bad_exit_fails_the_program(self):
        self.assertIn((0, c.PROGRAM, "fail"), result("TAP version 13\nok 1 - a\n").points)
        self.assertIn((0, c.PROGRAM, "fail"), result("ok 1 - a\n1..1\n", exit="1").points)
        self.assertIn((0, c.PROGRAM, "pass"), result("ok 1 - a\n1..1\n").points)


class VerdictTest(unittest.TestCase):
    runc = "ok 1 - a\nok 2 - b\nok 3 - b\n1..3\n"

    def test_order_does_not_matter_but_counts_do(self):
        vm = result("ok 1 - b\nok 2 - a\nnot ok 3 - b\n1..3\n")
        self.assertEqual(c.regressions(result(self.runc), vm), ["b"])
        vm = result("ok 1 - b\nok 2 - b\nok 3 - a\n1..3\n")
        self.assertEqual(c.regressions(result(self.runc), vm), [])

    def test_listed_difference_is_bounded_by_its_case_count(self):
        known = {"t": c.Known("t", 1, "fixing:h-x", "why")}
        one = result("ok 1 - a\nnot ok 2 - b\nok 3 - b\n1..3\n")
        two = result("ok 1 - a\nnot ok 2 - b\nnot ok 3 - b\n1..3\n")
        self.assertEqual(c.verdict("t", result(self.runc), one, known), (True, "known: fixing:h-x"))
        self.assertFalse(c.verdict("t", result(self.runc), two, known)[0])
        self.assertFalse(c.verdict("u", result(self.runc), one, known)[0])

    def test_leak_fails_even_when_cases_match(self):
        vm = result(self.runc, leaks=["mount /x"])
        self.assertEqual(c.verdict("t", result(self.runc), vm, {}), (False, "LEAK"))

    def test_runc_failures_are_not_differences(self):
        runc = result("not ok 1 - a\n1..1\n", exit="1")
        vm = result("TAP version 13\n", exit="timeout")
        self.assertTrue(c.verdict("t", runc, vm, {})[0])


class KnownTest(unittest.TestCase):
    def test_parse_and_reject(self):
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("# comment\nmounts 8 fixing:h-ocifix bind mounts show / as root\n"
                    "hooks all runc-fails expects other output\n")
        try:
            known = c.load_known(f.name)
        finally:
            os.unlink(f.name)
        self.assertEqual(known["mounts"].cases, 8)
        self.assertEqual(known["hooks"].cases, -1)
        self.assertEqual(known["hooks"].reason, "expects other output")
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("mounts 8 because reasons\n")
        try:
            with self.assertRaises(SystemExit):
                c.load_known(f.name)
        finally:
            os.unlink(f.name)


if __name__ == "__main__":
    unittest.main()
