"""The invocation edge: the daemon's HTTP server.

``site`` is the ``Site`` the daemon listens with; its connections start on the lean
``/r/`` channel of ``channel``, which hands anything unusual to twisted.web.
``writethrough`` sends small replies without a reactor round and ``headers`` spells
header names as Twisted does; ``headers`` imports nothing of Twisted, so the runner may
use it.

This file imports nothing, so importing one module of the package loads no other.
"""
