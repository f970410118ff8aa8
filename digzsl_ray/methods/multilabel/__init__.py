"""Multi-label zero-shot classification by diverse, tailored generation (Diff-ZS-MLC; issue 14).

Being built: the maths lives here first (:mod:`.discriminator`, :mod:`.losses`, :mod:`.sampling`,
:mod:`.prompts`); the method registers as ``method: multilabel`` once its stages exist.
"""
