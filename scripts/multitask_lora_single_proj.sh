#!/usr/bin/env bash
# Paper row: single lora with routing proj on VQAv2/GQA/NLVR2/COCO (CLIP-BART).
# usage: bash scripts/multitask_lora_single_proj.sh NGPU [section.key=value ...]
exec bash "$(dirname "$0")/_launch.sh" multitask_lora_single_proj "$@"
