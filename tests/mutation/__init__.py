"""Mutation testing, by hand-picked mutants: break one promise with a small
change in a copy of the tree and check that the tests named for it fail.

``python -m tests.mutation`` runs them (``--list``, ``--only NAME``);
mutants.py is the list. Not part of the test run or CI: a developer's habit
(docs/testing.md, "Mutation testing"). test_mutants_current.py, which is in
the test run, checks that every mutant still applies to the code.
"""
