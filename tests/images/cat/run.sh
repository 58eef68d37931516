#!/bin/sh
# Echoes stdin to stdout.
exec cat
