from .bi_wkv_interface import bi_wkv, bi_wkv_ref

__all__ = ["bi_wkv", "bi_wkv_ref"]
