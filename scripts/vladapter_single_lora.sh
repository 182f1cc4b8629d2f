#!/usr/bin/env bash
# VL-Adapter baseline vladapter_single_lora (parameter anchors of DESIGN.md §5).
# usage: bash scripts/vladapter_single_lora.sh NGPU [section.key=value ...]
exec bash "$(dirname "$0")/_launch.sh" vladapter_single_lora "$@"
