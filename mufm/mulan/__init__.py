"""MuLan family: text tower (pretrained MiniLM-L6 + projection), audio tower, task (to come)."""
