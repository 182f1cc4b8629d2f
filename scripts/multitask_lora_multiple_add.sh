#!/usr/bin/env bash
# Paper row: multiple lora with routing add on VQAv2/GQA/NLVR2/COCO (CLIP-BART).
# usage: bash scripts/multitask_lora_multiple_add.sh NGPU [section.key=value ...]
exec bash "$(dirname "$0")/_launch.sh" multitask_lora_multiple_add "$@"
