"""IronFunctions: a serverless platform (functions as Docker images over HTTP) as a Twisted daemon."""

__version__ = "0.3.0"
