"""IronFunctions, the serverless platform, as a Twisted daemon."""

import re

from setuptools import find_packages, setup

with open("ironfunctions/__init__.py") as f:
    version = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

setup(
    name="ironfunctions",
    version=version,
    description="IronFunctions serverless platform: run Docker-image functions over HTTP",
    long_description=open("README.rst").read(),
    long_description_content_type="text/x-rst",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests*", "bench*"]) + ["twisted.plugins"],
    package_data={"ironfunctions": ["storage/schema/*/*.sql", "py.typed", "bridge/ifbridge.c", "bridge/ifbridge"]},
    include_package_data=True,
    zip_safe=False,
    install_requires=[
        "twisted[tls]>=24.7,<27",  # rediss://: pyOpenSSL, service_identity, idna
        "klein>=24.8,<25",
        "treq>=24.9,<27",
        "txredisapi>=1.4.10,<2",
        "txpostgres>=1.7,<2",
        "psycopg2-binary>=2.9,<3",
        "docker>=7.1,<8",
        "attrs>=23.1",
        "zope.interface>=6",
        "PyJWT>=2.8,<3",
        "httptools>=0.6,<1",  # llhttp (C) for parsing hot functions' responses on the hot path
        "prometheus_client>=0.20,<1",  # /metrics: registry, histograms, text exposition
    ],
    extras_require={
        "test": [
            "pytest>=8,<9",
            "pytest-twisted==1.14.3",
            "mypy>=2.4,<2.5",  # pinned: strict mode fails on unused ignores when stubs move
            "mypy-zope>=1.0.17,<1.1",
            "types-docker",
        ],
    },
)
