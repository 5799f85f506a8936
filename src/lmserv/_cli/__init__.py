"""Subcommand groups of the ``lmserv`` command; see :mod:`lmserv.cli`."""
