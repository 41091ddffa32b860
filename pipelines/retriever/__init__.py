"""Retrievers that learn from the knowledge base: pairs export (`pairs`), fine-tuning (`fit`), the whole
`reasonflux retriever train` run (`train.train_retriever`), the registry (`registry`) and leave-one-chapter-out
evaluation (`evaluate`).
"""
