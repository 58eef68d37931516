"""twistd plugin: ``twistd -n ironfunctions``."""

from twisted.application.service import ServiceMaker

ironfunctions = ServiceMaker(
    "IronFunctions", "ironfunctions.tap", "IronFunctions serverless API server", "ironfunctions"
)
