#!/usr/bin/env bash
# Paper row: ViT-B/16 + GPT-2, Adapter r = 64, routing expand, COCO captions (Table 4).
# usage: bash scripts/vit_gpt2_coco_adapter_r64_expand.sh NGPU [section.key=value ...]   (model.recipe=released: the authors' code)
exec bash "$(dirname "$0")/_launch.sh" vit_gpt2_coco_adapter_r64_expand "$@"
