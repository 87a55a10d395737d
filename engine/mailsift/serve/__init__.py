"""``mailsift serve``: one service, many doors.

:mod:`.service` holds the :class:`Service` (one scoring pool, one learner,
the metrics) and :func:`run`, which opens the configured doors over it.
Each door is one module: the SMTP content filter (:mod:`mailsift.proxy`,
wrapped by ``service.SmtpDoor``), :mod:`.spamd`, :mod:`.http` and the milter.

A door is a class ``Door(service, host, port)`` with ``name``, ``port`` (the
bound port once started), ``async start()`` and ``async stop(grace)``, and
optionally ``reconfigure(config)`` for reloads.  It scores with
``await service.score(raw, context, door=NAME)`` (a :class:`~mailsift.Verdict`;
TimeoutError or the worker's error on failure) and learns with
``await service.learn(raw, spam, forget=False)`` (an outcome string).
"""

from .service import LearnRefused, Service, door_addresses, run

__all__ = ["LearnRefused", "Service", "door_addresses", "run"]
