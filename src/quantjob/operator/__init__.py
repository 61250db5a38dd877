"""Kopf controller, manifest builders and admission webhook. Never imports quantjob.worker or torch."""
