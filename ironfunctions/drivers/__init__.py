"""Container drivers: the one edge where function containers are created and run.

``interface.IContainerDriver`` is the contract; ``docker.DockerDriver`` talks to the Docker
engine, ``fake.FakeDriver`` plays scripted results. Nothing outside this package imports
docker-py.
"""
