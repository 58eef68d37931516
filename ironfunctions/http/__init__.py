"""The invocation edge: the daemon's HTTP server, and what both its servers share.

``site`` is the ``Site`` the daemon listens with; its connections start on the lean
``/r/`` channel of ``channel``, which hands anything unusual to twisted.web.
``writethrough`` sends small replies without a reactor round.

Pure modules, importing nothing of Twisted, so the runner may use them: ``headers``
spells header names as Twisted does, ``errors`` is the one map from domain exceptions
to HTTP answers (for ``/r/`` and the management API alike), ``jsonbody`` encodes JSON
bodies and ``bearer`` checks JWTs.

This file imports nothing, so importing one module of the package loads no other.
"""
