"""Hospital interoperability over HL7 v2 and MLLP (IHE PCD: PCD-01, PCD-03, PCD-04, PCD-10).

``codec`` wraps python-hl7; ``pcd03`` takes infusion orders in; ``outbound`` maps controller
events and status to messages; ``outbox`` keeps them in the run's database until the
receiver acknowledges them; ``server`` runs all of it behind ``pumpctl hl7 serve``.
"""
