"""AWS SageMaker support shared by the SageMaker backend, deployer and Predictor transport (boto3 only)."""
