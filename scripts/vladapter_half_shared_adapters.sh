#!/usr/bin/env bash
# VL-Adapter baseline vladapter_half_shared_adapters (VL-Adapter Table 1; parameter counts in the README).
# usage: bash scripts/vladapter_half_shared_adapters.sh NGPU [section.key=value ...]
exec bash "$(dirname "$0")/_launch.sh" vladapter_half_shared_adapters "$@"
