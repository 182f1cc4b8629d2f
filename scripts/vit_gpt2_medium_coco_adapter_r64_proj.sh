#!/usr/bin/env bash
# Paper row: ViT-L/16 + GPT-2 medium, Adapter r = 64, routing proj, COCO captions (Table B5).
# usage: bash scripts/vit_gpt2_medium_coco_adapter_r64_proj.sh NGPU [section.key=value ...]   (model.recipe=released: the authors' code)
exec bash "$(dirname "$0")/_launch.sh" vit_gpt2_medium_coco_adapter_r64_proj "$@"
