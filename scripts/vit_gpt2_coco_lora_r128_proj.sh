#!/usr/bin/env bash
# Paper row: ViT-B/16 + GPT-2, merged q|v LoRA r = 128, routing proj, COCO captions (Table 4).
# usage: bash scripts/vit_gpt2_coco_lora_r128_proj.sh NGPU [section.key=value ...]   (model.recipe=released: the authors' code)
exec bash "$(dirname "$0")/_launch.sh" vit_gpt2_coco_lora_r128_proj "$@"
