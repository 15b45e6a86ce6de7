"""Identity resolution as pure logic: identifiers, rules, the graph, the decider, profile history."""
