#!/usr/bin/env bash
# Paper row: single adapter with routing none on VQAv2/GQA/NLVR2/COCO (CLIP-BART).
# usage: bash scripts/multitask_adapter_single_none.sh NGPU [section.key=value ...]
exec bash "$(dirname "$0")/_launch.sh" multitask_adapter_single_none "$@"
