"""Pricing: block counts turned into speedups, with intervals.

The α–k cost model (`costmodel`), the measured forward times and the costs they give a draft
(`timings`, `batchcost` for serving batch sizes), the bootstrap over prompts (`stats`), the pooled
figures per draft × domain (`estimate`, `policy_estimate`) and the summary tables (`tables`). Not
here: reading a report or deciding what to print (that is `answers`). May import `records` and
`simulation`.
"""
