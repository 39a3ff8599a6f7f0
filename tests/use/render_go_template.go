// Renders an Ollama TEMPLATE with Go's text/template, as Ollama does: .System and .Messages.
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type input struct {
	Template string    `json:"template"`
	System   string    `json:"system"`
	Messages []message `json:"messages"`
}

func main() {
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	var in input
	if err := json.Unmarshal(raw, &in); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("t").Parse(in.Template))
	data := map[string]any{"System": in.System, "Messages": in.Messages}
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		panic(err)
	}
}
