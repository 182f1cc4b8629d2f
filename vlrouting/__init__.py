"""vlrouting: vision-language PEFT with routing functions (Qu, Tuytelaars, Moens, ECCV 2024).

Subpackages: ``routing`` (the parameter-free routing functions, paper Eq. 3-7 and Table 8 mixes),
``peft`` (Adapter/LoRA wrappers that carry routing), ``models`` (CLIP-BART), ``data`` (synthetic benchmark,
feature reader, task datasets, multitask loader), ``evaluation`` (VQAv2/GQA/NLVR2/COCO metrics),
``train`` (torchrun trainer), ``aggregate`` (mean ± std tables over seeds).
"""

__version__ = "0.1.0"
