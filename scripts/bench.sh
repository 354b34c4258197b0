#!/usr/bin/env bash
# Placeholder until the benchmark issue lands.
echo "benchmarks: not written yet"
