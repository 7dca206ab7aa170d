// Placeholder until the agent core lands.
