"""Use cases: plain synchronous functions ``(ctx, actor, ...)``.

Authorization (``access.authorize``) and audit (``audit.record``) are called here,
never in the adapters, so every entry point obeys the same rules.
"""
