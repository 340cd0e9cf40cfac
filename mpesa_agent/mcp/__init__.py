"""The payment tools as an MCP server (the official `mcp` SDK): `python -m mpesa_agent.mcp`."""
