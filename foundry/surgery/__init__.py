"""Architecture surgery: mutate a trained model and keep its weights (transforms.py), measure what the
mutation cost before any healing (cost.py), heal it by training against the parent (heal.py), and the
command line (`python -m foundry.surgery`, __main__.py).

    from foundry.surgery import operate, surgery_cost
    s = operate(parent, parent_cfg, "attention", "mqa")            # s.config, s.model, s.exact, s.details
    cost = surgery_cost(parent, s.model, heldout_windows)
"""
from foundry.surgery.cost import surgery_cost
from foundry.surgery.transforms import SURGERIES, Surgery, SurgeryError, operate

__all__ = ["SURGERIES", "Surgery", "SurgeryError", "operate", "surgery_cost"]
