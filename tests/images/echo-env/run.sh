#!/bin/sh
# Prints its environment, one VAR=value a line (sorted), then its stdin if any.
env | sort
