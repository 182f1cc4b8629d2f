#!/usr/bin/env bash
# VL-Adapter baseline vladapter_multiple_adapters (parameter anchors of DESIGN.md §5).
# usage: bash scripts/vladapter_multiple_adapters.sh NGPU [section.key=value ...]
exec bash "$(dirname "$0")/_launch.sh" vladapter_multiple_adapters "$@"
