"""Google Gemini API (generativelanguage.googleapis.com): generateContent, streamGenerateContent, embeddings."""
