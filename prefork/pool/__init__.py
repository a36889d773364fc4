"""The pool: the master's side, and one ``*_process`` module per kind of child it forks. Runs in the master.

A ``*_process.py`` module runs inside that child (a worker, a zygote); every
other module here runs in the master, but for what both sides share: the fork
mechanics (forking.py) and the scoreboard. docs/design.md draws the layers.
"""
