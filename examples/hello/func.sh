#!/bin/sh
# Hello World, IronFunctions style: reads {"name": "..."} from stdin (optional) and
# answers "Hello <name>!". Without input (or without a name) it answers "Hello World!".
name=$(cat | sed -n 's/.*"name"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' | head -n 1)
[ -n "$name" ] || name=World
echo "Hello $name!"
